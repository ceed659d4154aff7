"""The REST front end: TF Serving's /v1 API (status, metadata, predict with "instances" or "inputs")."""

from __future__ import annotations

import http.server
import io
import json
import math
import re
import socket
import threading
import time
from typing import Any, Callable

import grpc
import tensorflow as tf
from absl import logging
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from serving.dev_server import json_tensor
from serving.dev_server.errors import ServingError, invalid
from serving.dev_server.handlers import ModelServer
from serving.dev_server.predict import DEFAULT_SIGNATURE

# TF Serving's own URL patterns (http_rest_api_util.cc).
_VERSION_OR_LABEL = r"(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?"
_PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)" + _VERSION_OR_LABEL + r":(classify|regress|predict)", re.IGNORECASE)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?" + _VERSION_OR_LABEL + r"(?:/(metadata))?", re.IGNORECASE)
_DIGITS = re.compile(r"[0-9]+")
# A limit on request bodies: JSON parses into Python objects that take up to ~26x the text (a list of empty
# lists), so 16 MiB bounds one request's parse to about 0.4 GB, while a full default batch of 1024 rows of 100
# floats (about 2 MB as JSON) fits 8 times over. Larger inputs: gRPC, whose binary tensors are not amplified.
DEFAULT_MAX_BODY_MB = 16
# Seconds a client has to send a whole request (as TF Serving's --rest_api_timeout_in_ms default of 30 s bounds
# a request's handling); an idle keep-alive connection is closed after as long.
DEFAULT_READ_TIMEOUT_S = 30.0
LINGER_S = 2.0  # how long a refused request's unread body is drained before the connection closes
_HTTP_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
}


MAX_VERSION = 2**63 - 1  # ModelSpec.version is an int64


def _model_spec(name: str, version: str | None, label: str | None, spec) -> None:
    """Fill a ModelSpec from the URL parts."""
    spec.name = name
    if version:
        if len(version) > 19 or int(version) > MAX_VERSION:
            raise invalid(f"Failed to convert version: {version} to numeric.")
        spec.version.value = int(version)
    if label:
        spec.version_label = label


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


class _TimedSocketReader(io.RawIOBase):
    """A connection's reads, all bounded by the deadline of the request being read (per request, not per recv:
    a client sending one byte at a time must not hold its thread forever)."""

    def __init__(self, connection: socket.socket):
        super().__init__()
        self._connection = connection
        self.deadline = math.inf
        self.probing = False  # read only what has already arrived, without waiting

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        if self.probing:
            self._connection.settimeout(0.0)  # non-blocking (a timeout would make recv wait for data first)
            try:
                return self._connection.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                return None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client did not send its whole request within --rest_read_timeout_seconds")
        self._connection.settimeout(remaining)
        return self._connection.recv_into(buffer)


class RestHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST API on top of a ModelServer (class attributes: `core` and the limits)."""

    core: ModelServer
    max_body_bytes: int = DEFAULT_MAX_BODY_MB * 1024 * 1024
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        """Read the connection through a reader that enforces the request deadline."""
        super().setup()
        self.rfile.close()
        self._reader = _TimedSocketReader(self.connection)
        self.rfile = io.BufferedReader(self._reader, 64 * 1024)

    def handle_one_request(self) -> None:
        """One request: the client has read_timeout_s from now to send it (an idle keep-alive connection too)."""
        self._reader.deadline = time.monotonic() + self.read_timeout_s
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        """Route access logs to absl at debug level."""
        logging.debug("REST %s", format % args)

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        """Send a JSON reply (within read_timeout_s: a client that does not read must not hold the thread)."""
        data = json.dumps(payload).encode()
        self.connection.settimeout(self.read_timeout_s)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request whose body is not read, and close the connection (its framing is lost)."""
        self.close_connection = True
        self._reply(status, {"error": message})
        self.wfile.flush()
        # Closing with unread data makes the kernel send a reset, which can destroy the reply before a client
        # still sending its body reads it: stop writing, then discard what arrives for a short while.
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + min(LINGER_S, self.read_timeout_s)
            while (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                if not self.connection.recv(64 * 1024):
                    break
        except OSError:  # includes the timeout: the connection is closed next either way
            pass

    def _dispatch(self, work: Callable[[], dict[str, Any]]) -> None:
        """Run a handler, turning ServingError into TF Serving's {"error": ...} with its HTTP code."""
        try:
            self._reply(200, work())
        except ServingError as e:
            self._reply(_HTTP_CODES.get(e.code, 500), {"error": e.message})
        except Exception as e:  # a server bug: 500, and the connection stays usable
            logging.exception("Internal error")
            self._reply(500, {"error": f"{type(e).__name__}: {e}"})

    def _body_length(self) -> int | None:
        """The declared body length, or None after refusing a request whose length is bad or too large."""
        if self.headers.get("Transfer-Encoding") is not None:
            self._refuse(411, "Transfer-Encoding is not supported: send the body with a Content-Length header")
            return None
        values = self.headers.get_all("Content-Length") or []
        if len(values) > 1:
            self._refuse(400, f"{len(values)} Content-Length headers: send exactly one")
            return None
        value = values[0].strip() if values else "0"
        if not _DIGITS.fullmatch(value):
            self._refuse(400, f"Content-Length {value[:40]!r} is not a non-negative decimal integer")
            return None
        length = int(value) if len(value) <= 19 else math.inf
        if length > self.max_body_bytes:
            self._refuse(413, f"The request body of {value[:40]} bytes is larger than this server's maximum of "
                              f"{self.max_body_bytes} bytes (--rest_max_body_mb): send fewer rows per request, "
                              "use gRPC, or raise the flag")
            return None
        return length

    def handle_expect_100(self) -> bool:
        """Answer `Expect: 100-continue` with the refusal instead of 100 when the body would be refused anyway."""
        if self._body_length() is None:
            return False
        return super().handle_expect_100()

    def _read_body(self) -> bytes | None:
        """The request body (None when refused, or when the client closed before sending all of it)."""
        length = self._body_length()
        if length is None:
            return None
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return None
        # Bytes already sent after the declared body cannot be told apart from a smuggled request: answer this
        # one and close instead of parsing them as the next request.
        self._reader.probing = True
        try:
            if self.rfile.peek(1):
                self.close_connection = True
        finally:
            self._reader.probing = False
        return body

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        """Model status or metadata."""
        if self._read_body() is not None:  # a GET may carry a body: it is read (within the limits) and ignored
            self._dispatch(self._get)

    def do_POST(self) -> None:  # noqa: N802
        """Predict."""
        body = self._read_body()
        if body is not None:
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
        body = json_tensor.parse_body(raw)
        request = predict_pb2.PredictRequest()
        _model_spec(name, version, label, request.model_spec)
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid(f"JSON Value: {json_tensor.debug_string(body)} not formatted correctly. 'signature_name' "
                          "key must be a string value.")
        request.model_spec.signature_name = signature_name
        model, served = self.core.resolve(request.model_spec)
        signature_name = signature_name or DEFAULT_SIGNATURE
        signature = served.signature_defs.get(signature_name)
        if signature is None:
            raise invalid(f'Serving signature name: "{signature_name}" not found in signature def')
        arrays, fmt = json_tensor.request_arrays(body, signature, model.max_batch_size)
        for key, array in arrays.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
        return _json_outputs(self.core.predict(request), fmt)


class RestServer(http.server.ThreadingHTTPServer):
    """The REST server: one daemon thread per connection, each bounded in time by the handler's read timeout."""

    daemon_threads = True
    # socketserver's default backlog of 5 makes a burst of connections wait seconds for SYN retries, or fail.
    request_queue_size = socket.SOMAXCONN

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a request's handling (e.g. reset by the client): a debug line."""
        logging.debug("REST connection from %s ended with an error", client_address, exc_info=True)


def make_rest_server(core: ModelServer, host: str, port: int, max_body_mb: int = DEFAULT_MAX_BODY_MB,
                     read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> RestServer:
    """The REST server bound and listening (not yet serving)."""
    if max_body_mb < 1 or read_timeout_s <= 0:
        raise ValueError(f"the REST body limit ({max_body_mb} MiB) must be >= 1 and the read timeout "
                         f"({read_timeout_s} s) > 0")
    handler = type("BoundRestHandler", (RestHandler,), {"core": core, "max_body_bytes": max_body_mb * 1024 * 1024,
                                                        "read_timeout_s": read_timeout_s})
    return RestServer((host, port), handler)


def start_rest_server(core: ModelServer, host: str, port: int, max_body_mb: int = DEFAULT_MAX_BODY_MB,
                      read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> tuple[RestServer, int]:
    """Start the REST server in a daemon thread; returns it and the bound port."""
    server = make_rest_server(core, host, port, max_body_mb, read_timeout_s)
    threading.Thread(target=server.serve_forever, name="rest", daemon=True).start()
    return server, server.server_address[1]
