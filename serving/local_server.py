"""A local server speaking TensorFlow Serving's protocol, for development, tests and machines without TF Serving.

    python -m serving.local_server --model_base_path=exports/dcgan --model_name=dcgan --port=8500 [--rest_port=8501]

Implements, with the tensorflow-serving-api protos and grpcio, PredictionService `Predict` and `GetModelMetadata`
and ModelService `GetModelStatus`, plus TF Serving's REST API (`GET /v1/models/NAME[/versions/N][/metadata]`,
`POST /v1/models/NAME[/versions/N]:predict` with "instances" or "inputs"). It follows TF Serving's semantics:

  * `<base_path>/<integer>/` folders are versions (other names are ignored); the latest one is served;
  * the base path is polled (`--file_system_poll_wait_seconds`); a new version is loaded and warmed up
    (`assets.extra/tf_serving_warmup_requests`) before it replaces the served one, so requests never fail during a
    swap; if it fails to load, the old version keeps serving (availability-preserving policy);
  * requests may name a version (only the served one exists, as with TF Serving's default policy) and a
    signature; errors carry TF Serving's status codes and messages (NOT_FOUND, FAILED_PRECONDITION,
    INVALID_ARGUMENT), and outputs are encoded like TF Serving's (typed value fields, or tensor_content with
    `--enable_serialization_as_tensor_content`).

Differences from tensorflow_model_server, all deliberate: it binds 127.0.0.1 unless `--host` says otherwise;
requests over `--max_batch_size` (or the batching parameters file's max_batch_size) are refused with TF Serving's
batching error but are never merged into larger batches; a scalar int input named `num_images` counts as the
batch size (so the DCGAN `sample` signature is capped too); a wrong input shape is reported before the graph runs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.server
import json
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Callable

import grpc
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from google.protobuf import json_format, text_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from dcgan_tf.files import atomic_write

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHODS = ("tensorflow/serving/predict", "tensorflow/serving/classify", "tensorflow/serving/regress")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
MAX_LOAD_ATTEMPTS = 5  # like TF Serving's --max_num_load_retries default
BATCH_SIZE_INPUT = "num_images"  # a scalar int input with this name is a batch size (DCGAN `sample`)
DEFAULT_MAX_MESSAGE_MB = 256  # gRPC's 4 MiB default is too small for image batches
State = get_model_status_pb2.ModelVersionStatus.State


class ServingError(Exception):
    """A request error with a gRPC status code and TF Serving's message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> ServingError:
    """INVALID_ARGUMENT."""
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


# ---------------------------------------------------------------------------------------------------------
# Tensors.


def dtype_name(dtype_enum: int) -> str:
    """TF's short dtype name (DT_FLOAT -> "float"), as in TF's error messages."""
    return types_pb2.DataType.Name(dtype_enum)[3:].lower()


def shape_dims(shape: tensor_shape_pb2.TensorShapeProto) -> list[int] | None:
    """A signature shape as a list (-1 = any size), or None for unknown rank."""
    return None if shape.unknown_rank else [d.size for d in shape.dim]


_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT16: "int_val", types_pb2.DT_INT64: "int64_val", types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
}


def to_tensor_proto(array: np.ndarray, as_content: bool = False) -> tensor_pb2.TensorProto:
    """numpy -> TensorProto, in typed value fields like TF Serving's default (or packed tensor_content)."""
    array = np.asarray(array)
    dtype = tf.as_dtype(array.dtype).as_datatype_enum
    field = _VALUE_FIELDS.get(dtype)
    if as_content or field is None:
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tf.TensorShape(array.shape).as_proto())
    getattr(proto, field).extend(memoryview(np.ascontiguousarray(array).ravel()))
    return proto


def _clean_op_message(error: tf.errors.OpError) -> str:
    """The message of a TF runtime error without the Python-side "Graph execution error" preamble."""
    skip = ("Graph execution error", "Detected at node", "<stack traces unavailable>")
    lines = [line for line in error.message.splitlines() if line.strip() and not line.startswith(skip)]
    return "\n".join(lines) or error.message


def _grpc_code(error: tf.errors.OpError) -> grpc.StatusCode:
    """The gRPC code with the same number as a TF error code (TF and gRPC share the numbering)."""
    for code in grpc.StatusCode:
        if code.value[0] == error.error_code:
            return code
    return grpc.StatusCode.UNKNOWN


# ---------------------------------------------------------------------------------------------------------
# One loaded version of a model.


@dataclasses.dataclass
class LoadedVersion:
    """A SavedModel loaded for serving: its signature defs (for checks/metadata) and callable signatures."""

    name: str
    version: int
    path: str
    module: Any
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    functions: dict[str, Callable[..., dict[str, tf.Tensor]]]


def read_signature_defs(path: str) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The signature defs of the `serve` meta graph in path/saved_model.pb (what TF Serving reports)."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{path} has no meta graph tagged 'serve'")


def load_version(name: str, version: int, path: str) -> LoadedVersion:
    """Load one version folder (raises on a missing or broken SavedModel)."""
    signature_defs = read_signature_defs(path)
    module = tf.saved_model.load(path, tags=["serve"])
    functions = {key: module.signatures[key] for key in module.signatures.keys()}
    return LoadedVersion(name, version, path, module, signature_defs, functions)


# ---------------------------------------------------------------------------------------------------------
# Running a Predict request against a loaded version (shared by gRPC, REST and warmup).


def _check_inputs(signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest) -> None:
    """TF Serving's checks of the request's input names (same messages)."""
    request_keys, signature_keys = sorted(request.inputs), sorted(signature.inputs)
    if len(request_keys) != len(signature_keys):
        extra = sorted(set(request_keys) - set(signature_keys))
        missing = sorted(set(signature_keys) - set(request_keys))
        raise _invalid(
            f"input size does not match signature: {len(request_keys)}!={len(signature_keys)} "
            f"len({{{','.join(request_keys)}}}) != len({{{','.join(signature_keys)}}}). "
            f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")
    for alias in signature_keys:
        if alias not in request.inputs:
            raise _invalid(
                f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) not found in request "
                f"and no default value provided. Inputs expected to be in the request {{{','.join(request_keys)}}}, "
                "or default input alias set: ")


def _decode_inputs(signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest,
                   max_batch_size: int) -> dict[str, np.ndarray]:
    """Request tensors as numpy, checked against the signature's dtypes and shapes and the batch cap."""
    arrays = {}
    for index, alias in enumerate(sorted(signature.inputs)):
        info, proto = signature.inputs[alias], request.inputs[alias]
        if proto.dtype != info.dtype:
            raise _invalid(f"Expects arg[{index}] to be {dtype_name(info.dtype)} but {dtype_name(proto.dtype)} "
                           "is provided")
        try:
            array = tf.make_ndarray(proto)
        except Exception:  # any malformed proto; TF Serving's message names only the alias
            raise _invalid(f"tensor parsing error: {alias}") from None
        expected = shape_dims(info.tensor_shape)
        if expected is not None and (len(expected) != array.ndim or
                                     any(e not in (-1, a) for e, a in zip(expected, array.shape))):
            raise _invalid(f"input {alias!r} has shape {list(array.shape)}, the signature needs "
                           f"{expected} (-1 = any size)")
        arrays[alias] = array
    _check_batch_size(arrays, max_batch_size)
    return arrays


def _check_batch_size(arrays: dict[str, np.ndarray], max_batch_size: int) -> None:
    """Refuse a batch over the cap with TF Serving's batching message."""
    if max_batch_size <= 0:
        return
    sizes = [int(a.shape[0]) for a in arrays.values() if a.ndim >= 1]
    if BATCH_SIZE_INPUT in arrays and arrays[BATCH_SIZE_INPUT].ndim == 0:
        sizes.append(int(arrays[BATCH_SIZE_INPUT]))
    for size in sizes:
        if size > max_batch_size:
            raise _invalid(f"Task size {size} is larger than maximum input batch size {max_batch_size}")


def _output_aliases(signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest) -> list[str]:
    """The outputs to return: output_filter (checked like TF Serving) or all of them."""
    seen: list[str] = []
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise _invalid(f"output tensor alias not found in signature: {alias} Outputs expected to be in the "
                           f"set {{{','.join(sorted(signature.outputs))}}}.")
        if alias in seen:
            raise _invalid(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen or sorted(signature.outputs)


def run_predict(served: LoadedVersion, request: predict_pb2.PredictRequest, max_batch_size: int = 0,
                as_content: bool = False) -> predict_pb2.PredictResponse:
    """Run a PredictRequest on one loaded version; raises ServingError like TF Serving would."""
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = served.signature_defs.get(signature_name)
    if signature is None:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f'Serving signature key "{signature_name}" not found.')
    if signature.method_name not in PREDICT_METHODS or signature_name not in served.functions:
        raise ServingError(grpc.StatusCode.INTERNAL,
                           f"Expected prediction signature method_name to be one of {{{', '.join(PREDICT_METHODS)}}}"
                           f". Was: {signature.method_name}")
    _check_inputs(signature, request)
    arrays = _decode_inputs(signature, request, max_batch_size)
    aliases = _output_aliases(signature, request)
    try:
        outputs = served.functions[signature_name](**{k: tf.constant(v) for k, v in arrays.items()})
    except tf.errors.OpError as e:
        raise ServingError(_grpc_code(e), _clean_op_message(e)) from None
    except (TypeError, ValueError) as e:  # rejected by the function's input signature before running
        raise _invalid(str(e)) from None
    response = predict_pb2.PredictResponse()
    response.model_spec.name = served.name
    response.model_spec.version.value = served.version
    response.model_spec.signature_name = signature_name
    for alias in aliases:
        response.outputs[alias].CopyFrom(to_tensor_proto(outputs[alias].numpy(), as_content))
    return response


def warm_up(served: LoadedVersion, max_batch_size: int) -> int:
    """Replay the version's TF Serving warmup requests (Predict only); returns how many ran."""
    path = os.path.join(served.path, WARMUP_FILE)
    if not os.path.exists(path):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"{path}: only predict_log warmup records are supported, got "
                             f"{log.WhichOneof('log_type')}")
        run_predict(served, log.predict_log.request, max_batch_size)
        count += 1
    return count


# ---------------------------------------------------------------------------------------------------------
# Version management: poll the base path, load the latest version, swap it in only when ready.


@dataclasses.dataclass
class VersionStatus:
    """A version's state as GetModelStatus reports it."""

    state: int
    error_code: int = 0
    error_message: str = ""


class ServedModel:
    """One model name: its base path, the served version and the states of all versions seen."""

    def __init__(self, name: str, base_path: str, max_batch_size: int = 0):
        self.name = name
        self.base_path = os.path.abspath(base_path)
        self.max_batch_size = max_batch_size
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._current: LoadedVersion | None = None
        self._statuses: dict[int, VersionStatus] = {}
        self._attempts: dict[int, int] = {}
        self._warned_empty = False

    @property
    def current(self) -> LoadedVersion | None:
        """The version now served (None before the first load)."""
        with self._lock:
            return self._current

    def versions_on_disk(self) -> list[int]:
        """Integer version folders under the base path (temporary/non-numeric names are ignored)."""
        try:
            names = os.listdir(self.base_path)
        except OSError:
            return []
        return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(self.base_path, n)))

    def poll(self) -> None:
        """Serve the latest version on disk if it is not served yet (load fully, warm up, then swap)."""
        with self._load_lock:  # one load at a time per model
            versions = self.versions_on_disk()
            if not versions:
                if not self._warned_empty:
                    logging.warning("No versions of servable %s found under base path %s", self.name,
                                    self.base_path)
                    self._warned_empty = True
                return
            self._warned_empty = False
            target = versions[-1]
            current = self.current
            if (current is not None and current.version == target) or \
                    self._attempts.get(target, 0) >= MAX_LOAD_ATTEMPTS:
                return
            self._load_and_swap(target)

    def _load_and_swap(self, version: int) -> None:
        """Load `version`; on success make it the served one, on failure keep serving the old one."""
        path = os.path.join(self.base_path, str(version))
        self._attempts[version] = self._attempts.get(version, 0) + 1
        self._set_status(version, VersionStatus(State.LOADING))
        start = time.monotonic()
        try:
            loaded = load_version(self.name, version, path)
            warmups = warm_up(loaded, self.max_batch_size)
        except Exception as e:  # any failure to load must leave the served version alone
            code = e.code.value[0] if isinstance(e, ServingError) else getattr(e, "error_code", 2)
            self._set_status(version, VersionStatus(State.END, code, f"{type(e).__name__}: {e}"))
            old = self.current
            logging.error("Loading version %d of %s from %s failed (attempt %d of %d): %s. %s", version, self.name,
                          path, self._attempts[version], MAX_LOAD_ATTEMPTS, e,
                          f"Still serving version {old.version}." if old else "No version is served.")
            return
        with self._lock:
            old, self._current = self._current, loaded
            self._statuses[version] = VersionStatus(State.AVAILABLE)
            if old is not None:
                self._statuses[old.version] = VersionStatus(State.END)
        logging.info("Serving version %d of %s (loaded in %.2f s, %d warmup requests)%s.", version, self.name,
                     time.monotonic() - start, warmups, f"; unloaded version {old.version}" if old else "")

    def _set_status(self, version: int, status: VersionStatus) -> None:
        """Record a version's state."""
        with self._lock:
            self._statuses[version] = status

    def statuses(self) -> list[tuple[int, VersionStatus]]:
        """All versions seen, newest first (TF Serving's order)."""
        with self._lock:
            return sorted(self._statuses.items(), reverse=True)


# ---------------------------------------------------------------------------------------------------------
# The server core: request handling independent of the transport.


class ModelServer:
    """Predict / GetModelMetadata / GetModelStatus over a set of ServedModels."""

    def __init__(self, models: list[ServedModel], as_content: bool = False):
        self.models = {m.name: m for m in models}
        self.as_content = as_content

    def poll_all(self) -> None:
        """Poll every model's base path once."""
        for model in self.models.values():
            model.poll()

    def resolve(self, spec) -> tuple[ServedModel, LoadedVersion]:
        """The model and version a ModelSpec asks for, or NOT_FOUND like TF Serving."""
        if spec.version_label:
            raise _invalid(f"Unrecognized servable version label: {spec.version_label}")
        wanted = spec.version.value if spec.HasField("version") else None
        described = f"Specific({spec.name}, {wanted})" if wanted is not None else f"Latest({spec.name})"
        model = self.models.get(spec.name)
        current = model.current if model is not None else None
        if current is None or (wanted is not None and wanted != current.version):
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {described}")
        return model, current

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        """PredictionService.Predict."""
        if not request.HasField("model_spec"):
            raise _invalid("Missing ModelSpec")
        model, served = self.resolve(request.model_spec)
        return run_predict(served, request, model.max_batch_size, self.as_content)

    def get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                           ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """PredictionService.GetModelMetadata (signature_def only, like TF Serving)."""
        if not request.HasField("model_spec"):
            raise _invalid("Missing ModelSpec")
        if not request.metadata_field:
            raise _invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise _invalid(f"Metadata field {field} is not supported")
        _, served = self.resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = served.name
        response.model_spec.version.value = served.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in served.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature)
        response.metadata["signature_def"].Pack(signature_map)
        return response

    def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest
                         ) -> get_model_status_pb2.GetModelStatusResponse:
        """ModelService.GetModelStatus."""
        if not request.HasField("model_spec"):
            raise _invalid("Missing ModelSpec")
        spec = request.model_spec
        if spec.version_label:
            raise _invalid(f"Unrecognized servable version label: {spec.version_label}")
        model = self.models.get(spec.name)
        statuses = model.statuses() if model is not None else []
        if spec.HasField("version"):
            statuses = [(v, s) for v, s in statuses if v == spec.version.value]
            if not statuses:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {spec.version.value} of model {spec.name}")
        elif not statuses:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, status in statuses:
            entry = response.model_version_status.add(version=version, state=status.state)
            entry.status.error_code = status.error_code
            entry.status.error_message = status.error_message
        return response


# ---------------------------------------------------------------------------------------------------------
# gRPC transport.


def _grpc_call(method: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    """Wrap a ModelServer method: ServingError -> the gRPC status; anything else -> INTERNAL."""

    def handler(request, context: grpc.ServicerContext):
        try:
            return method(request)
        except ServingError as e:
            context.abort(e.code, e.message)
        except Exception as e:  # a server bug must not look like a client error
            logging.exception("Internal error")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    return handler


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService: Predict and GetModelMetadata (Classify/Regress/MultiInference stay UNIMPLEMENTED)."""

    def __init__(self, core: ModelServer):
        self.Predict = _grpc_call(core.predict)
        self.GetModelMetadata = _grpc_call(core.get_model_metadata)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """ModelService: GetModelStatus (HandleReloadConfigRequest stays UNIMPLEMENTED)."""

    def __init__(self, core: ModelServer):
        self.GetModelStatus = _grpc_call(core.get_model_status)


def grpc_options(max_message_mb: int) -> list[tuple[str, int]]:
    """Channel/server options: message limits for image batches; no silent port sharing."""
    limit = max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 0)]


def start_grpc_server(core: ModelServer, host: str, port: int, threads: int, max_message_mb: int
                      ) -> tuple[grpc.Server, int]:
    """Start the gRPC server; returns it and the bound port (useful with port 0)."""
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=threads),
                         options=grpc_options(max_message_mb))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise OSError(f"cannot bind gRPC to {host}:{port} (in use?); pick another --port")
    server.start()
    return server, bound


# ---------------------------------------------------------------------------------------------------------
# REST transport (TF Serving's /v1 API).

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
            raise _invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")
        raise _invalid("Missing 'inputs' or 'instances' key")
    names = sorted(signature.inputs)
    fmt = "row" if "instances" in body else "columnar"
    data = body["instances"] if fmt == "row" else body["inputs"]
    if fmt == "row":
        if not isinstance(data, list):
            raise _invalid("Expecting 'instances' to be an list/array")
        if data and all(isinstance(x, dict) for x in data):
            values = {name: [row.get(name) for row in data] for name in {k for row in data for k in row}}
        elif len(names) == 1:
            values = {names[0]: data}
        else:
            raise _invalid(f"Expecting object per instance with the signature's inputs {names}")
    else:
        values = data if isinstance(data, dict) else ({names[0]: data} if len(names) == 1 else None)
        if values is None:
            raise _invalid(f"Expecting 'inputs' to be an object with the signature's inputs {names}")
    arrays = {}
    for name, value in values.items():
        info = signature.inputs.get(name)
        dtype = tf.as_dtype(info.dtype).as_numpy_dtype if info is not None else None
        try:
            arrays[name] = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError) as e:
            raise _invalid(f"Failed to process element: {name} of '{fmt == 'row' and 'instances' or 'inputs'}'"
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
        raise _invalid(f"Output tensors have inconsistent batch sizes {sizes}; use the columnar 'inputs' format")
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
            raise _invalid(f"Malformed request: GET {self.path}")
        name, version, label, metadata = match.groups()
        if not name:
            raise _invalid("Missing model name in request.")
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
            raise _invalid(f"Malformed request: POST {self.path}")
        name, version, label, method = match.groups()
        if method.lower() != "predict":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not supported by this server")
        try:
            body = json.loads(raw or b"null")
        except ValueError as e:
            raise _invalid(f"JSON Parse error: {e}") from None
        if not isinstance(body, dict):
            raise _invalid("JSON Value: is not of expected type: Object")
        request = predict_pb2.PredictRequest()
        _model_spec(name, version, label, request.model_spec)
        request.model_spec.signature_name = body.get("signature_name", "")
        _, served = self.core.resolve(request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = served.signature_defs.get(signature_name)
        if signature is None:
            raise _invalid(f'Serving signature name: "{signature_name}" not found in signature def')
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


# ---------------------------------------------------------------------------------------------------------
# Configuration files shared with tensorflow_model_server.


def read_max_batch_size(path: str) -> int:
    """max_batch_size from a TF Serving batching parameters file (text BatchingParameters)."""
    with open(path) as f:
        match = re.search(r"max_batch_size\s*\{\s*value:\s*(\d+)\s*\}", f.read())
    if not match:
        raise ValueError(f"{path} sets no max_batch_size {{ value: N }}")
    return int(match.group(1))


def read_model_config(path: str) -> list[tuple[str, str]]:
    """(name, base_path) of each model in a TF Serving models.config; relative paths are relative to the file."""
    config = model_server_config_pb2.ModelServerConfig()
    with open(path) as f:
        text_format.Parse(f.read(), config)
    models = []
    for model in config.model_config_list.config:
        policy = model.model_version_policy.WhichOneof("policy_choice")
        if policy not in (None, "latest") or (policy == "latest" and model.model_version_policy.latest.num_versions
                                              not in (0, 1)):
            logging.warning("Model %s: version policy %s is not supported here; serving the latest version.",
                            model.name, policy)
        base = model.base_path if os.path.isabs(model.base_path) else os.path.join(os.path.dirname(path),
                                                                                   model.base_path)
        models.append((model.name, base))
    if not models:
        raise ValueError(f"{path} lists no model in model_config_list")
    return models


# ---------------------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The server's flags (names follow tensorflow_model_server where it has the same option)."""
    flags.DEFINE_string("model_name", "dcgan", "Name clients use in ModelSpec.name.")
    flags.DEFINE_string("model_base_path", None, "Export base path holding <version>/ SavedModel folders.")
    flags.DEFINE_string("model_config_file", None,
                        "TF Serving models.config (instead of --model_name/--model_base_path).")
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 exposes the server to the network.")
    flags.DEFINE_integer("port", 8500, "gRPC port (0 = any free port, see --ready_file).")
    flags.DEFINE_integer("rest_port", 0, "REST port (TF Serving's --rest_api_port); 0 = no REST server.")
    flags.DEFINE_alias("rest_api_port", "rest_port")
    flags.DEFINE_float("file_system_poll_wait_seconds", 1.0, "Seconds between polls of the base path for versions.")
    flags.DEFINE_integer("max_batch_size", 1024, "Largest batch (or num_images) accepted; 0 = no cap.")
    flags.DEFINE_string("batching_parameters_file", None, "TF Serving batching file; its max_batch_size is the cap.")
    flags.DEFINE_integer("grpc_threads", 8, "gRPC worker threads.")
    flags.DEFINE_integer("max_message_mb", DEFAULT_MAX_MESSAGE_MB, "gRPC message size limit in MiB.")
    flags.DEFINE_bool("enable_serialization_as_tensor_content", False,
                      "Send outputs as packed tensor_content (faster) instead of typed value fields.")
    flags.DEFINE_string("ready_file", None, "Write {\"grpc_port\", \"rest_port\", \"pid\"} here once serving.")


def _write_ready_file(path: str, payload: dict[str, int]) -> None:
    """Atomically write the ready file."""
    with atomic_write(path) as f:
        json.dump(payload, f)


def main(argv: list[str]) -> None:
    """Start serving and poll for new versions until SIGINT/SIGTERM."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if bool(FLAGS.model_base_path) == bool(FLAGS.model_config_file):
        raise app.UsageError("pass exactly one of --model_base_path (with --model_name) or --model_config_file")
    cap = read_max_batch_size(FLAGS.batching_parameters_file) if FLAGS.batching_parameters_file else \
        FLAGS.max_batch_size
    specs = read_model_config(FLAGS.model_config_file) if FLAGS.model_config_file else \
        [(FLAGS.model_name, FLAGS.model_base_path)]
    core = ModelServer([ServedModel(name, base, cap) for name, base in specs],
                       as_content=FLAGS.enable_serialization_as_tensor_content)
    core.poll_all()  # like TF Serving: try to load what is there before accepting requests
    try:
        grpc_server, grpc_port = start_grpc_server(core, FLAGS.host, FLAGS.port, FLAGS.grpc_threads,
                                                   FLAGS.max_message_mb)
        rest_server, rest_port = start_rest_server(core, FLAGS.host, FLAGS.rest_port) if FLAGS.rest_port else \
            (None, 0)
    except OSError as e:
        sys.exit(f"error: {e}")
    logging.info("Serving %s over gRPC on %s:%d%s (max batch %s).", ", ".join(core.models), FLAGS.host,
                 grpc_port, f", REST on {FLAGS.host}:{rest_port}" if rest_port else "", cap or "unlimited")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if FLAGS.ready_file:
        _write_ready_file(FLAGS.ready_file, {"grpc_port": grpc_port, "rest_port": rest_port, "pid": os.getpid()})
    while not stop.wait(FLAGS.file_system_poll_wait_seconds):
        core.poll_all()
    logging.info("Shutting down.")
    if rest_server is not None:
        rest_server.shutdown()
    grpc_server.stop(grace=2).wait()


if __name__ == "__main__":
    define_flags()
    app.run(main)
