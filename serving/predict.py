"""One Predict request against one loaded version: TF Serving's checks and messages, then the signature's run.

Shared by the gRPC and REST front ends and by the warm-up replay, so all three see the same behaviour.
"""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from serving.errors import ServingError, invalid
from serving.tensors import dtype_name, shape_dims, to_tensor_proto
from serving.versions import LoadedVersion

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHODS = ("tensorflow/serving/predict", "tensorflow/serving/classify", "tensorflow/serving/regress")
BATCH_SIZE_INPUT = "num_images"  # a scalar int input with this name is a batch size (DCGAN `sample`)


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


def decode_inputs(signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest
                  ) -> dict[str, np.ndarray]:
    """Request tensors as numpy, checked against the signature's dtypes and shapes."""
    arrays = {}
    for index, alias in enumerate(sorted(signature.inputs)):
        info, proto = signature.inputs[alias], request.inputs[alias]
        if proto.dtype != info.dtype:
            raise invalid(f"Expects arg[{index}] to be {dtype_name(info.dtype)} but {dtype_name(proto.dtype)} "
                          "is provided")
        try:
            array = tf.make_ndarray(proto)
        except Exception:  # any malformed proto; TF Serving's message names only the alias
            raise invalid(f"tensor parsing error: {alias}") from None
        expected = shape_dims(info.tensor_shape)
        if expected is not None and (len(expected) != array.ndim or
                                     any(e not in (-1, a) for e, a in zip(expected, array.shape))):
            raise invalid(f"input {alias!r} has shape {list(array.shape)}, the signature needs "
                          f"{expected} (-1 = any size)")
        arrays[alias] = array
    return arrays


def check_batch_size(arrays: dict[str, np.ndarray], max_batch_size: int) -> None:
    """Refuse a batch over the cap with TF Serving's batching message (a scalar num_images counts as one)."""
    if max_batch_size <= 0:
        return
    sizes = [int(a.shape[0]) for a in arrays.values() if a.ndim >= 1]
    if BATCH_SIZE_INPUT in arrays and arrays[BATCH_SIZE_INPUT].ndim == 0:
        sizes.append(int(arrays[BATCH_SIZE_INPUT]))
    for size in sizes:
        if size > max_batch_size:
            raise invalid(f"Task size {size} is larger than maximum input batch size {max_batch_size}")


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
                as_content: bool = False) -> predict_pb2.PredictResponse:
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
    arrays = decode_inputs(signature, request)
    check_batch_size(arrays, max_batch_size)
    aliases = output_aliases(signature, request)
    outputs = served.run(signature_name, arrays)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = served.name
    response.model_spec.version.value = served.version
    response.model_spec.signature_name = signature_name
    for alias in aliases:
        response.outputs[alias].CopyFrom(to_tensor_proto(outputs[alias], as_content))
    return response
