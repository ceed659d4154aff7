"""TensorProto encoding as TF Serving does it, and the dtype/shape names its error messages use."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT16: "int_val", types_pb2.DT_INT64: "int64_val", types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
}


def dtype_name(dtype_enum: int) -> str:
    """TF's short dtype name (DT_FLOAT -> "float"), as in TF's error messages."""
    return types_pb2.DataType.Name(dtype_enum)[3:].lower()


def shape_dims(shape: tensor_shape_pb2.TensorShapeProto) -> list[int] | None:
    """A signature shape as a list (-1 = any size), or None for unknown rank."""
    return None if shape.unknown_rank else [d.size for d in shape.dim]


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
