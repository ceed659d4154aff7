"""TensorProto encoding as TF Serving does it, the dtype/shape names its error messages use, and the checks that
bound what decoding a TensorProto may allocate."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.dev_server.errors import invalid

_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT16: "int_val", types_pb2.DT_INT64: "int64_val", types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
}
# Where a request's values may be, for the dtypes a request may carry: (typed field, values per element).
_REQUEST_FIELDS = {**{dtype: (field, 1) for dtype, field in _VALUE_FIELDS.items()},
                   types_pb2.DT_HALF: ("half_val", 1), types_pb2.DT_BFLOAT16: ("half_val", 1),
                   types_pb2.DT_STRING: ("string_val", 1), types_pb2.DT_COMPLEX64: ("scomplex_val", 2),
                   types_pb2.DT_COMPLEX128: ("dcomplex_val", 2)}


def dtype_name(dtype_enum: int) -> str:
    """TF's short dtype name (DT_FLOAT -> "float"), as in TF's error messages; any enum value has one."""
    try:
        return types_pb2.DataType.Name(dtype_enum)[3:].lower()
    except ValueError:  # a client may send any integer in the enum field
        return f"unknown dtype enum {dtype_enum}"


def shape_dims(shape: tensor_shape_pb2.TensorShapeProto) -> list[int] | None:
    """A signature shape as a list (-1 = any size), or None for unknown rank."""
    return None if shape.unknown_rank else [d.size for d in shape.dim]


def check_shape(alias: str, dims: list[int], info: meta_graph_pb2.TensorInfo) -> None:
    """Refuse a request shape the signature does not accept (checked before any value is decoded)."""
    expected = shape_dims(info.tensor_shape)
    if expected is not None and (len(expected) != len(dims) or any(e not in (-1, a) for e, a in zip(expected, dims))):
        raise invalid(f"input {alias!r} has shape {dims}, the signature needs {expected} (-1 = any size)")


def check_batch_size(size: int, max_batch_size: int) -> None:
    """Refuse a batch over the cap (0 = no cap) with TF Serving's batching message."""
    if 0 < max_batch_size < size:
        raise invalid(f"Task size {size} is larger than maximum input batch size {max_batch_size}")


def check_value_count(proto: tensor_pb2.TensorProto, dims: list[int]) -> str | None:
    """Why the proto's values do not fill its shape exactly (None when they do).

    TensorFlow's own decoding (C++ `Tensor::FromProto` in tensorflow/core/framework/tensor.cc, and
    `tf.make_ndarray`) repeats the last typed value to fill a shape, so a few bytes can declare gigabytes; this
    server refuses any count that is not exactly one value per element, which is what numpy-built protos
    (`tf.make_tensor_proto(array)`) always send.
    """
    elements = math.prod(dims)  # Python ints: no overflow however large the dims
    if proto.tensor_content:
        if proto.dtype == types_pb2.DT_STRING:
            return "string tensors must send their values in string_val, not tensor_content"
        try:
            itemsize = tf.as_dtype(proto.dtype).size
        except TypeError:
            return f"dtype {dtype_name(proto.dtype)} cannot be sent as tensor_content"
        if len(proto.tensor_content) != elements * itemsize:
            return (f"tensor_content has {len(proto.tensor_content)} bytes, the shape {dims} needs "
                    f"{elements} x {itemsize} = {elements * itemsize}")
        return None
    field, per_element = _REQUEST_FIELDS.get(proto.dtype, (None, 1))
    if field is None:
        return f"dtype {dtype_name(proto.dtype)} cannot be sent in a request"
    count = len(getattr(proto, field))
    if count != elements * per_element:
        return (f"{count} values in {field} for shape {dims} ({elements} elements): send one value per element "
                "(tf.make_tensor_proto(numpy_array) does)")
    return None


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
