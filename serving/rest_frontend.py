"""The REST front end: TF Serving's /v1 API (status, metadata, predict with "instances" or "inputs")."""

from __future__ import annotations

import http.server
import json
import re
import threading
from typing import Any, Callable

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import json_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from serving.errors import ServingError, invalid
from serving.handlers import ModelServer
from serving.predict import DEFAULT_SIGNATURE

# TF Serving's own URL patterns (http_rest_api_util.cc).
_VERSION_OR_LABEL = r"(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
_PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)" + _VERSION_OR_LABEL + r":(classify|regress|predict)", re.IGNORECASE)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?" + _VERSION_OR_LABEL + r"(?:/(metadata))?", re.IGNORECASE)
_HTTP_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
}


def _model_spec(name: str, version: str | None, label: str | None, spec) -> None:
    """Fill a ModelSpec from the URL parts."""
    spec.name = name
    if version:
        spec.version.value = int(version)
    if label:
        spec.version_label = label


def _json_inputs(body: dict[str, Any], signature: meta_graph_pb2.SignatureDef
                 ) -> tuple[dict[str, np.ndarray], str]:
    """A predict body's tensors (row "instances" or columnar "inputs") and its format."""
    if ("instances" in body) == ("inputs" in body):
        if "instances" in body:
            raise invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")
        raise invalid("Missing 'inputs' or 'instances' key")
    names = sorted(signature.inputs)
    fmt = "row" if "instances" in body else "columnar"
    data = body["instances"] if fmt == "row" else body["inputs"]
    if fmt == "row":
        if not isinstance(data, list):
            raise invalid("Expecting 'instances' to be an list/array")
        if data and all(isinstance(x, dict) for x in data):
            values = {name: [row.get(name) for row in data] for name in {k for row in data for k in row}}
        elif len(names) == 1:
            values = {names[0]: data}
        else:
            raise invalid(f"Expecting object per instance with the signature's inputs {names}")
    else:
        values = data if isinstance(data, dict) else ({names[0]: data} if len(names) == 1 else None)
        if values is None:
            raise invalid(f"Expecting 'inputs' to be an object with the signature's inputs {names}")
    arrays = {}
    for name, value in values.items():
        info = signature.inputs.get(name)
        dtype = tf.as_dtype(info.dtype).as_numpy_dtype if info is not None else None
        try:
            arrays[name] = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError) as e:
            raise invalid(f"Failed to process element: {name} of '{fmt == 'row' and 'instances' or 'inputs'}'"
                           f" list. Error: {e}") from None
    return arrays, fmt


def _json_outputs(response: predict_pb2.PredictResponse, fmt: str) -> dict[str, Any]:
    """A PredictResponse as TF Serving's JSON ("predictions" for rows, "outputs" for columns)."""
    outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    if fmt == "columnar":
        return {"outputs": next(iter(outputs.values())).tolist() if len(outputs) == 1 else
                {k: v.tolist() for k, v in outputs.items()}}
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values())).tolist()}
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in outputs.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise invalid(f"Output tensors have inconsistent batch sizes {sizes}; use the columnar 'inputs' format")
    return {"predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(next(iter(sizes.values())))]}


class RestHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST API on top of a ModelServer (set as the class attribute `core`)."""

    core: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Route access logs to absl at debug level."""
        logging.debug("REST %s", format % args)

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        """Send a JSON reply."""
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, work: Callable[[], dict[str, Any]]) -> None:
        """Run a handler, turning ServingError into TF Serving's {"error": ...} with its HTTP code."""
        try:
            self._reply(200, work())
        except ServingError as e:
            self._reply(_HTTP_CODES.get(e.code, 500), {"error": e.message})
        except Exception as e:  # a server bug: 500, and the connection stays usable
            logging.exception("Internal error")
            self._reply(500, {"error": f"{type(e).__name__}: {e}"})

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        """Model status or metadata."""
        self._dispatch(self._get)

    def do_POST(self) -> None:  # noqa: N802
        """Predict."""
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._dispatch(lambda: self._post(body))

    def _check_api_path(self) -> None:
        """Paths outside /v1/ are not part of the API (TF Serving does not dispatch them)."""
        if not self.path.lower().startswith("/v1/"):
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"{self.path} is not a TF Serving REST path (/v1/...)")

    def _get(self) -> dict[str, Any]:
        """GET /v1/models/NAME[/versions/N][/metadata]."""
        self._check_api_path()
        match = _STATUS_PATH.fullmatch(self.path.split("?")[0])
        if not match:
            raise invalid(f"Malformed request: GET {self.path}")
        name, version, label, metadata = match.groups()
        if not name:
            raise invalid("Missing model name in request.")
        if metadata:
            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            _model_spec(name, version, label, request.model_spec)
            response = self.core.get_model_metadata(request)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signature_map)
            return {"model_spec": json_format.MessageToDict(response.model_spec, True, True),
                    "metadata": {"signature_def": json_format.MessageToDict(signature_map, True, True)}}
        request = get_model_status_pb2.GetModelStatusRequest()
        _model_spec(name, version, label, request.model_spec)
        return json_format.MessageToDict(self.core.get_model_status(request), True, True)

    def _post(self, raw: bytes) -> dict[str, Any]:
        """POST /v1/models/NAME[/versions/N]:predict."""
        self._check_api_path()
        match = _PREDICT_PATH.fullmatch(self.path.split("?")[0])
        if not match:
            raise invalid(f"Malformed request: POST {self.path}")
        name, version, label, method = match.groups()
        if method.lower() != "predict":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not supported by this server")
        try:
            body = json.loads(raw or b"null")
        except ValueError as e:
            raise invalid(f"JSON Parse error: {e}") from None
        if not isinstance(body, dict):
            raise invalid("JSON Value: is not of expected type: Object")
        request = predict_pb2.PredictRequest()
        _model_spec(name, version, label, request.model_spec)
        request.model_spec.signature_name = body.get("signature_name", "")
        _, served = self.core.resolve(request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = served.signature_defs.get(signature_name)
        if signature is None:
            raise invalid(f'Serving signature name: "{signature_name}" not found in signature def')
        arrays, fmt = _json_inputs(body, signature)
        for key, array in arrays.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
        return _json_outputs(self.core.predict(request), fmt)


def start_rest_server(core: ModelServer, host: str, port: int) -> tuple[http.server.ThreadingHTTPServer, int]:
    """Start the REST server in a daemon thread; returns it and the bound port."""
    handler = type("BoundRestHandler", (RestHandler,), {"core": core})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="rest", daemon=True).start()
    return server, server.server_address[1]
