"""Property-based fuzzing (Hypothesis) of both front ends' request decoding on the development server.

For arbitrary JSON bodies (REST) and arbitrary TensorProtos (gRPC), the answer is a client error (4xx;
INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION, where TF Serving answers those) or a correct result: never a
500 / INTERNAL, and no request makes the server allocate more than a bound (memory traced, in every thread, while
each request is answered). Derandomized (the same examples on every run) and bounded in example count; no
deadline, so a slow machine cannot fail it.
"""

from __future__ import annotations

import base64
import json
import tracemalloc

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

import serving_toy as toy

EXAMPLES = 150  # per search: a few seconds each on a 2-core CPU
REQUEST_MEMORY_MB = 16  # the most one (small) request may make the server allocate; one of 54 bytes cost 1 GB
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SIGNATURES = {toy.DEFAULT: {"x": np.float32}, "sample": {"count": np.int32, "seed": np.int64},
              "seeds": {"seeds": np.int64}, "text": {"text": object}}
SIGNATURE_NAMES = ["", toy.DEFAULT, "sample", "seeds", "text", "nope"]
GRPC_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
HTTP_CODES = {400, 404, 501}  # 501: :classify/:regress, UNIMPLEMENTED as in TF Serving


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz") / "toy"
    toy.write_toy_export(base)
    running = toy.start_toy_server(base, max_body_mb=1, read_timeout_s=30.0)
    yield running
    running.close()


def _within_memory_bound(call):
    """call()'s result, checking the memory traced while it runs (server threads included; Hypothesis's own
    bookkeeping between examples is not traced)."""
    tracemalloc.start()
    try:
        result = call()
        peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    assert peak_mb < REQUEST_MEMORY_MB, f"{peak_mb:.0f} MB allocated while answering one request"
    return result


def _close(actual, expected) -> None:
    if np.size(expected) == 0:  # JSON writes any empty array as [] whatever its shape
        assert np.size(actual) == 0, actual
        return
    # atol: TensorFlow's CPU kernels flush float32 subnormals to zero.
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=1e-6,
                               atol=2 * float(np.finfo(np.float32).tiny), equal_nan=True)


# ---------------------------------------------------------------------------------------------------------
# REST: arbitrary JSON, and bodies shaped like predict requests with arbitrary contents.

def _mostly(common, rare, odds: int = 3):
    """`common` about `odds` times out of odds + 1, else `rare` (Hypothesis has no weights; a choice index does)."""
    return st.integers(0, odds).flatmap(lambda i: rare if i == 0 else common)


_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6) |
            st.sampled_from([2**31, 2**63, 2**64, -1, 0, 3.7, "5", {"b64": "YWJj"}, {"b64": "not base64!"}]))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=5) |
                     st.dictionaries(st.sampled_from(["x", "count", "seed", "seeds", "text", "b64", "k"]) |
                                     st.text(max_size=4), inner, max_size=4), max_leaves=24)
_numbers = st.floats(-1e3, 1e3, width=32) | st.integers(-5, 5)
# Values each toy input accepts, each now and then replaced by an arbitrary JSON value.
_VALUES = {
    "x": st.integers(0, toy.CAP + 2).flatmap(lambda n: st.lists(
        _mostly(st.lists(_mostly(_numbers, _json, 30), min_size=toy.WIDTH, max_size=toy.WIDTH), _json, 12),
        min_size=n, max_size=n)),
    "count": _mostly(st.integers(-3, toy.MAX_ROWS + 6), _json),
    "seed": _mostly(st.integers(-2**63, 2**63 - 1), _json),
    "seeds": st.lists(_mostly(st.integers(-2**63, 2**63 - 1), _json, 12), max_size=toy.CAP + 2),
    "text": st.lists(_mostly(st.text(max_size=5) | st.binary(max_size=5).map(
        lambda b: {"b64": base64.b64encode(b).decode()}), _json, 12), max_size=toy.CAP + 2),
}


@st.composite
def _predict_bodies(draw) -> dict:
    """A predict body for one toy signature, in either format, with the occasional wrong or missing part."""
    signature = draw(_mostly(st.sampled_from(SIGNATURE_NAMES[:-1]), st.sampled_from(["nope"]) | _scalars, 8))
    names = sorted(SIGNATURES.get(signature or toy.DEFAULT, {"x": None}) if isinstance(signature, str) else ["x"])
    values = {name: draw(_VALUES[name]) for name in names}
    body = {} if signature == "" and draw(st.booleans()) else {"signature_name": signature}
    row_format = draw(st.booleans())
    if row_format and names != ["count", "seed"]:  # per-row: a list (one input), or an object per row
        rows = values[names[0]]
        body["instances"] = [{names[0]: row} for row in rows] if draw(st.booleans()) else rows
    elif row_format:
        body["instances"] = [values]
    else:
        body["inputs"] = values if len(names) > 1 or draw(st.booleans()) else values[names[0]]
    if draw(st.integers(0, 7)) == 0:  # a wrong extra: both formats, or arbitrary keys
        body.update(draw(st.dictionaries(st.sampled_from(["inputs", "instances", "other"]), _json, max_size=2)))
    return body


_raw = (st.binary(max_size=48) | st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n) |
        st.integers(1, 5000).map(lambda n: b'{"inputs": ' + b"[" * n + b"]" * n + b"}"))
SERVED_PATHS = ("/v1/models/toy:predict", "/v1/models/toy/versions/1:predict")
_paths = _mostly(st.sampled_from(SERVED_PATHS), st.sampled_from([
    "/v1/models/toy:classify", f"/v1/models/toy/versions/{2**64}:predict", "/v1/models/toy/versions/2:predict",
    "/v1/models/nope:predict", "/v1/models/toy/labels/stable:predict", "/v2/x:predict"]), 6)


def _reference(body: dict) -> tuple[str, dict[str, np.ndarray]]:
    """The signature and inputs a 200 answer was computed from, decoded independently of the server."""
    signature = body.get("signature_name") or toy.DEFAULT
    inputs, names = SIGNATURES[signature], sorted(SIGNATURES[signature])
    data = body["instances"] if "instances" in body else body["inputs"]
    named = isinstance(data, dict) or (isinstance(data, list) and data and isinstance(data[0], dict) and
                                       "b64" not in data[0])
    if "instances" in body and named:
        values = {name: [row[name] for row in data] for name in names}
    else:
        values = {name: data[name] for name in names} if named else {names[0]: data}
    if signature == "text":
        values["text"] = [base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode() for v in values["text"]]
    return signature, {name: np.asarray(value, inputs[name]) for name, value in values.items()}


def _check_rest_answer(body, status: int, reply: dict) -> None:
    assert status == 200 or status in HTTP_CODES, (status, reply)
    if status != 200:
        assert isinstance(reply.get("error"), str) and reply["error"]
        return
    signature, inputs = _reference(body)
    expected = toy.expected_outputs(signature, inputs)
    if "instances" in body:
        predictions = reply["predictions"]
        if len(expected) == 1:
            _close(predictions, next(iter(expected.values())))
        else:
            for key, value in expected.items():
                _close([row[key] for row in predictions], value)
    else:
        outputs = reply["outputs"]
        if len(expected) == 1:
            _close(outputs, next(iter(expected.values())))
        else:
            for key, value in expected.items():
                _close(outputs[key], value)


def test_rest_decoding_answers_client_errors_or_correct_results_in_bounded_memory(server):
    @FUZZ
    @given(body=_mostly(_predict_bodies(), _json, 6), path=_paths)
    def json_bodies(body, path):
        data = json.dumps(body).encode()
        status, reply = _within_memory_bound(lambda: toy.post(server.rest_port, data, path))
        if path in SERVED_PATHS and isinstance(body, dict):
            _check_rest_answer(body, status, reply)
        else:  # another model, version, label or method, or not an object: an error
            assert status in HTTP_CODES, (status, reply)

    @FUZZ
    @given(data=_raw)
    def raw_bodies(data):
        status, reply = _within_memory_bound(lambda: toy.post(server.rest_port, data))
        assert status in HTTP_CODES, (status, reply)

    json_bodies()
    raw_bodies()


# ---------------------------------------------------------------------------------------------------------
# gRPC: arbitrary TensorProtos (any dtype enum, declared shape, value fields, packed content) in requests.

_DTYPES = sorted(types_pb2.DataType.values())
_dims = st.lists(st.integers(-2, 9) | st.sampled_from([2_500_000, 10**9, 2**40, 2**62]), max_size=4)


@st.composite
def _arbitrary_protos(draw) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=draw(st.sampled_from(_DTYPES) | st.integers(-3, 20000) |
                                              st.sampled_from([types_pb2.DT_FLOAT, types_pb2.DT_INT64,
                                                               types_pb2.DT_INT32, types_pb2.DT_STRING])))
    if draw(st.integers(0, 9)) == 0:
        proto.tensor_shape.unknown_rank = True
    for size in draw(_dims):
        proto.tensor_shape.dim.add(size=size)
    proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=40)))
    proto.int_val.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=12)))
    proto.int64_val.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=12)))
    proto.string_val.extend(draw(st.lists(st.binary(max_size=6), max_size=6)))
    proto.half_val.extend(draw(st.lists(st.integers(0, 2**16 - 1), max_size=4)))
    content = draw(st.none() | st.binary(max_size=160))
    if content:
        proto.tensor_content = content
    return proto


def _valid_proto(name: str, rows: int, seed: int) -> tensor_pb2.TensorProto:
    """A well-formed tensor for a toy input (so that correct answers get checked too)."""
    rng = np.random.RandomState(seed)
    if name == "x":
        return tf.make_tensor_proto(rng.uniform(-10, 10, (rows, toy.WIDTH)).astype(np.float32))
    if name == "count":
        return tf.make_tensor_proto(np.int32(rng.randint(-3, toy.MAX_ROWS + 5)))
    if name == "seed":
        return tf.make_tensor_proto(np.int64(rng.randint(-100, 100)))
    if name == "seeds":
        return tf.make_tensor_proto(rng.randint(-2**62, 2**62, rows).astype(np.int64))
    return tf.make_tensor_proto(np.array([b"ab" * i for i in range(rows)], object))


@st.composite
def _requests(draw) -> predict_pb2.PredictRequest:
    """A PredictRequest, mostly for the toy model and one of its signatures, with arbitrary tensors among good ones."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = draw(_mostly(st.just("toy"), st.sampled_from(["nope", ""]), 8))
    signature = draw(_mostly(st.sampled_from(SIGNATURE_NAMES[:-1]), st.just("nope") | st.text(max_size=5), 8))
    request.model_spec.signature_name = signature
    version = draw(_mostly(st.none(), st.sampled_from([1, 2, -1, 2**63 - 1]), 6))
    if version is not None:
        request.model_spec.version.value = version
    names = sorted(SIGNATURES.get(signature or toy.DEFAULT, {"x": None}))
    extra = draw(_mostly(st.just([]), st.lists(st.sampled_from(["x", "seeds", "extra"]), min_size=1, max_size=2), 6))
    rows, seed = draw(st.integers(0, toy.CAP + 2)), draw(st.integers(0, 2**16))
    for name in names + extra:
        arbitrary = draw(_mostly(st.just(False), st.just(True), 2))
        request.inputs[name].CopyFrom(draw(_arbitrary_protos()) if arbitrary else _valid_proto(name, rows, seed))
    request.output_filter.extend(draw(_mostly(st.just([]), st.lists(
        st.sampled_from(["double", "pair", "rows", "length", "no"]), min_size=1, max_size=2), 4)))
    return request


def _check_grpc_answer(request: predict_pb2.PredictRequest, response: predict_pb2.PredictResponse) -> None:
    signature = request.model_spec.signature_name or toy.DEFAULT
    inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
    expected = toy.expected_outputs(signature, inputs)
    assert set(response.outputs) == (set(request.output_filter) or set(expected))
    for key, proto in response.outputs.items():
        _close(tf.make_ndarray(proto), expected[key])


def test_grpc_decoding_answers_client_errors_or_correct_results_in_bounded_memory(server):
    stub = server.stub()

    @FUZZ
    @given(request=_requests())
    def tensor_protos(request):
        def call():
            try:
                return stub.Predict(request, timeout=60)
            except grpc.RpcError as e:
                return e

        answer = _within_memory_bound(call)
        if isinstance(answer, grpc.RpcError):
            assert answer.code() in GRPC_CODES, (answer.code(), answer.details())
        else:
            _check_grpc_answer(request, answer)

    tensor_protos()
