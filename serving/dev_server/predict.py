"""One Predict request against one loaded version: TF Serving's checks and messages, then the signature's run.

Shared by the gRPC and REST front ends and by the warm-up replay, so all three see the same behaviour.
"""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from serving.dev_server.errors import ServingError, invalid
from serving.dev_server.tensors import check_batch_size, check_shape, check_value_count, dtype_name, to_tensor_proto
from serving.dev_server.versions import LoadedVersion

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
PREDICT_METHODS = ("tensorflow/serving/predict", "tensorflow/serving/classify", "tensorflow/serving/regress")


def check_input_names(signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest) -> None:
    """TF Serving's checks of the request's input names (same messages)."""
    request_keys, signature_keys = sorted(request.inputs), sorted(signature.inputs)
    if len(request_keys) != len(signature_keys):
        extra = sorted(set(request_keys) - set(signature_keys))
        missing = sorted(set(signature_keys) - set(request_keys))
        raise invalid(
            f"input size does not match signature: {len(request_keys)}!={len(signature_keys)} "
            f"len({{{','.join(request_keys)}}}) != len({{{','.join(signature_keys)}}}). "
            f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")
    for alias in signature_keys:
        if alias not in request.inputs:
            raise invalid(
                f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) not found in request "
                f"and no default value provided. Inputs expected to be in the request {{{','.join(request_keys)}}}, "
                "or default input alias set: ")


def decode_inputs(signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest,
                  max_batch_size: int = 0, batch_size_inputs: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Request tensors as numpy, checked against the signature's dtypes and shapes and the batch cap (which also
    holds the value of any scalar integer input named in `batch_size_inputs`).

    Everything a TensorProto declares (dtype, shape, value count) is checked before anything is allocated, so
    what decoding costs is bounded by the size of the message itself.
    """
    arrays = {}
    for index, alias in enumerate(sorted(signature.inputs)):
        info, proto = signature.inputs[alias], request.inputs[alias]
        if proto.dtype != info.dtype:
            raise invalid(f"Expects arg[{index}] to be {dtype_name(info.dtype)} but {dtype_name(proto.dtype)} "
                          "is provided")
        dims = [d.size for d in proto.tensor_shape.dim]
        if proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
            raise invalid(f"tensor parsing error: {alias}: a request tensor needs a known shape with sizes >= 0, "
                          f"got {'unknown rank' if proto.tensor_shape.unknown_rank else dims}")
        check_shape(alias, dims, info)
        if dims:
            check_batch_size(dims[0], max_batch_size)
        problem = check_value_count(proto, dims)
        if problem:
            raise invalid(f"tensor parsing error: {alias}: {problem}")
        try:
            arrays[alias] = tf.make_ndarray(proto)
        except Exception:  # any other malformed proto; TF Serving's message names only the alias
            raise invalid(f"tensor parsing error: {alias}") from None
    for alias in batch_size_inputs:
        array = arrays.get(alias)
        if array is not None and array.ndim == 0 and np.issubdtype(array.dtype, np.integer):
            check_batch_size(int(array), max_batch_size)
    return arrays


def output_aliases(signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest) -> list[str]:
    """The outputs to return: output_filter (checked like TF Serving) or all of them."""
    seen: list[str] = []
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise invalid(f"output tensor alias not found in signature: {alias} Outputs expected to be in the "
                          f"set {{{','.join(sorted(signature.outputs))}}}.")
        if alias in seen:
            raise invalid(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen or sorted(signature.outputs)


def run_predict(served: LoadedVersion, request: predict_pb2.PredictRequest, max_batch_size: int = 0,
                as_content: bool = False, batch_size_inputs: tuple[str, ...] = ()) -> predict_pb2.PredictResponse:
    """Run a PredictRequest on one loaded version; raises ServingError like TF Serving would."""
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = served.signature_defs.get(signature_name)
    if signature is None:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f'Serving signature key "{signature_name}" not found.')
    if signature.method_name not in PREDICT_METHODS:
        raise ServingError(grpc.StatusCode.INTERNAL,
                           f"Expected prediction signature method_name to be one of {{{', '.join(PREDICT_METHODS)}}}"
                           f". Was: {signature.method_name}")
    check_input_names(signature, request)
    arrays = decode_inputs(signature, request, max_batch_size, batch_size_inputs)
    aliases = output_aliases(signature, request)
    outputs = served.run(signature_name, arrays)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = served.name
    response.model_spec.version.value = served.version
    response.model_spec.signature_name = signature_name
    for alias in aliases:
        response.outputs[alias].CopyFrom(to_tensor_proto(outputs[alias], as_content))
    return response
