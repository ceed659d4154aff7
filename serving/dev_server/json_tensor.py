"""REST predict bodies to tensors, with the rules and messages of TF Serving's util/json_tensor.cc.

Row format (`"instances"`: one list entry per batch row, an object per row when the signature has several inputs)
and columnar format (`"inputs"`: one value, or an object with one value per input). Every check that bounds the
cost comes before the values are converted: the number of rows against the batch cap, each tensor's shape (read
from the first element at every level) against the signature; then every value is visited once (linear in the
body), with TF Serving's type rules (an int input takes JSON integers only: 3.7, "5" and true are refused).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from typing import Any

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.dev_server.errors import ServingError, invalid
from serving.dev_server.tensors import check_batch_size, check_shape, dtype_name

MAX_DEBUG_CHARS = 256  # how much of a JSON value an error message quotes (TF Serving's kMaxJsonDebugStringBytes)
_MAX_RANK = 64  # numpy's (and so any tensor's here) largest number of dimensions
_FLOATS = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)
_INT_RANGES = {
    types_pb2.DT_INT8: (-2**7, 2**7 - 1), types_pb2.DT_UINT8: (0, 2**8 - 1),
    types_pb2.DT_INT16: (-2**15, 2**15 - 1), types_pb2.DT_INT32: (-2**31, 2**31 - 1),
    types_pb2.DT_INT64: (-2**63, 2**63 - 1), types_pb2.DT_UINT32: (0, 2**32 - 1), types_pb2.DT_UINT64: (0, 2**64 - 1),
}
_NUMPY = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_BOOL: np.bool_,
          types_pb2.DT_INT8: np.int8, types_pb2.DT_UINT8: np.uint8, types_pb2.DT_INT16: np.int16,
          types_pb2.DT_INT32: np.int32, types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT32: np.uint32,
          types_pb2.DT_UINT64: np.uint64, types_pb2.DT_STRING: object}


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or INVALID_ARGUMENT with TF Serving's parse messages."""
    if not raw:
        raise invalid("JSON Parse error: The document is empty")
    try:
        body = json.loads(raw)
    except RecursionError:  # Python's parser recurses per nesting level
        raise invalid("JSON Parse error: the document is nested too deeply") from None
    except ValueError as e:  # includes invalid UTF-8 and integers with too many digits
        raise invalid(f"JSON Parse error: {e}") from None
    if not isinstance(body, dict):
        raise invalid(f"JSON Value: {debug_string(body)} Is not object")
    return body


def debug_string(value: Any, limit: int = MAX_DEBUG_CHARS) -> str:
    """A JSON value as compact text for an error message, cut at `limit` characters without serialising the rest."""
    out: list[str] = []
    size = 0
    stack: list[Any] = [value]
    while stack and size < limit:
        item = stack.pop()
        if isinstance(item, _Text):
            piece = item.text
        elif isinstance(item, list):
            parts: list[Any] = [_Text("[")]
            for i, element in enumerate(itertools.islice(item, limit)):  # each takes one character or more
                parts += [_Text(",")] * (i > 0) + [element]
            stack.extend(reversed(parts + [_Text("]")]))
            continue
        elif isinstance(item, dict):
            parts = [_Text("{")]
            for i, (key, element) in enumerate(itertools.islice(item.items(), limit)):
                parts += [_Text(",")] * (i > 0) + [_Text(json.dumps(key[:limit]) + ":"), element]
            stack.extend(reversed(parts + [_Text("}")]))
            continue
        else:
            piece = json.dumps(item[:limit] if isinstance(item, str) else item)
        out.append(piece)
        size += len(piece)
    text = "".join(out)
    return text if len(text) <= limit and not stack else text[:limit] + "..."


class _Text:
    """Literal text in debug_string's work stack."""

    def __init__(self, text: str):
        self.text = text


def json_type(value: Any) -> str:
    """The JSON type name TF Serving's messages use."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _is_b64(value: Any) -> bool:
    """A {"b64": "..."} object: one string value, base64-encoded."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _type_error(value: Any, dtype: int) -> ServingError:
    return invalid(f"JSON Value: {debug_string(value)} Type: {json_type(value)} is not of expected type: "
                   f"{dtype_name(dtype)}")


def dense_shape(value: Any) -> list[int]:
    """The shape of a JSON value: the size of the first list at every level (TF Serving's GetDenseTensorShape)."""
    dims = []
    while isinstance(value, list) and len(dims) <= _MAX_RANK:
        dims.append(len(value))
        if not value:
            break
        value = value[0]
    return dims


def _leaves(value: Any, dims: list[int]) -> list[Any]:
    """All values of a dense JSON tensor in row-major order; each list is visited once."""
    rank, level_items = len(dims), [value]
    for level, size in enumerate(dims):
        below: list[Any] = []
        for item in level_items:
            if not isinstance(item, list):
                raise invalid(f"JSON Value: {debug_string(item)} found at incorrect level: {level + 1} in the JSON "
                              f"DOM. Expected at level: {rank}")
            if len(item) != size:
                raise invalid(f"Encountered list at unexpected size: {len(item)} at level: {level} expected size: "
                              f"{size}")
            below.extend(item)
        level_items = below
    for item in level_items:
        if isinstance(item, list):
            raise invalid(f"Encountered list at unexpected level: {rank} expected < {rank}")
    return level_items


def _to_array(leaves: list[Any], dims: list[int], dtype: int) -> np.ndarray:
    """The leaves as a numpy array of the signature's dtype, with TF Serving's type rules."""
    if dtype in _FLOATS:
        bad = next((x for x in leaves if type(x) not in (int, float)), _NOTHING)
    elif dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        bad = next((x for x in leaves if type(x) is not int), _NOTHING)
        if bad is _NOTHING:
            wide = next((x for x in leaves if not low <= x <= high), _NOTHING)
            if wide is not _NOTHING:
                raise invalid(f"JSON Value: {debug_string(wide)} Type: Number is out of range for type "
                              f"{dtype_name(dtype)} [{low}, {high}]")
    elif dtype == types_pb2.DT_BOOL:
        bad = next((x for x in leaves if type(x) is not bool), _NOTHING)
    elif dtype == types_pb2.DT_STRING:
        bad = next((x for x in leaves if not (isinstance(x, str) or _is_b64(x))), _NOTHING)
        if bad is _NOTHING:
            try:
                leaves = [base64.b64decode(x["b64"], validate=True) if isinstance(x, dict) else x.encode()
                          for x in leaves]
            except (binascii.Error, ValueError):
                raise invalid("Unable to base64 decode") from None
    else:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           f"Conversion of JSON Value: {debug_string(leaves[:1])} to type: {dtype_name(dtype)}")
    if bad is not _NOTHING:
        raise _type_error(bad, dtype)
    array = np.empty(len(leaves), _NUMPY[dtype])
    try:
        array[:] = leaves
    except OverflowError:  # an integer too large even for float64, e.g. 10**400 for a float input
        wide = next((x for x in leaves if abs(x) > np.finfo(np.float64).max), leaves[0])
        raise invalid(f"JSON Value: {debug_string(wide)} Type: Number is out of range for type "
                      f"{dtype_name(dtype)}") from None
    return array.reshape(dims)


_NOTHING = object()


def _tensor(alias: str, value: Any, info: meta_graph_pb2.TensorInfo, max_batch_size: int) -> np.ndarray:
    """One input from its JSON value (or, for rows, the list of its per-row values), checked before conversion."""
    dims = dense_shape(value)
    check_shape(alias, dims, info)
    if dims:
        check_batch_size(dims[0], max_batch_size)
    return _to_array(_leaves(value, dims), dims, info.dtype)


def request_arrays(body: dict[str, Any], signature: meta_graph_pb2.SignatureDef, max_batch_size: int = 0
                   ) -> tuple[dict[str, np.ndarray], str]:
    """A predict body's tensors and its format ("row" for "instances", "columnar" for "inputs")."""
    if "instances" in body and "inputs" in body:
        raise invalid(f"JSON Value: {debug_string(body)} Not formatted correctly expecting only one of 'inputs' or "
                      "'instances' keys to exist ")
    names = sorted(signature.inputs)
    if not names:
        raise invalid("Failed to get input map for signature")
    if "instances" in body:
        return _row_arrays(body["instances"], signature, names, max_batch_size), "row"
    if "inputs" in body:
        return _columnar_arrays(body["inputs"], signature, names, max_batch_size), "columnar"
    raise invalid("Missing 'inputs' or 'instances' key")


def _row_arrays(instances: Any, signature: meta_graph_pb2.SignatureDef, names: list[str], max_batch_size: int
                ) -> dict[str, np.ndarray]:
    """Row format: the instances regrouped per input (one pass over them), then one tensor per input."""
    if not isinstance(instances, list):
        raise invalid(f"JSON Value: {debug_string(instances)} Expecting 'instances' to be an list/array")
    if not instances:
        raise invalid("No values in 'instances' array")
    check_batch_size(len(instances), max_batch_size)  # before anything else is looked at
    objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not objects and len(names) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple input tensors required "
                      "as per tensorinfo_map")
    if not objects:
        for i, element in enumerate(instances):
            if isinstance(element, dict) and not _is_b64(element):
                raise invalid(f"Expecting value/list but got object at item {i} of input list")
        columns = {names[0]: instances}
    else:
        columns = {name: [] for name in names}
        for i, element in enumerate(instances):
            if not isinstance(element, dict) or _is_b64(element):
                raise invalid(f"Expecting object but got list at item {i} of input list")
            if len(element) != len(names) or any(key not in columns for key in element):
                raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: "
                              f"{debug_string(element)} keys must be equal to: {','.join(names)}")
            for name in names:
                columns[name].append(element[name])
    return {name: _tensor(name, column, signature.inputs[name], max_batch_size) for name, column in columns.items()}


def _columnar_arrays(inputs: Any, signature: meta_graph_pb2.SignatureDef, names: list[str], max_batch_size: int
                     ) -> dict[str, np.ndarray]:
    """Columnar format: one value per input."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(names) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors required "
                          "as per tensorinfo_map")
        inputs = {names[0]: inputs}
    arrays = {}
    for name in names:
        if name not in inputs:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _tensor(name, inputs[name], signature.inputs[name], max_batch_size)
    return arrays
