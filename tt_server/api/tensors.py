"""Tensor protobuf <-> domain conversions, on the Predict hot path: keep them cheap and copy-free."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tensortrigger.v1 import tensor_pb2

from tt_server.api.convert import DTYPE_FROM_PB, DTYPE_TO_PB
from tt_server.errors import FieldViolation, InvalidArgument
from tt_server.formats.dtypes import NUMPY_DTYPES
from tt_server.types import DType, WireTensor

_TYPED_FIELD: dict[DType, str] = {
    DType.FLOAT16: "float_val",
    DType.FLOAT32: "float_val",
    DType.FLOAT64: "double_val",
    DType.INT8: "int_val",
    DType.INT16: "int_val",
    DType.INT32: "int_val",
    DType.UINT8: "int_val",
    DType.INT64: "int64_val",
    DType.BOOL: "bool_val",
    DType.STRING: "string_val",
}
_TYPED_FIELD_ORDER = tuple(f.name for f in tensor_pb2.Tensor.DESCRIPTOR.fields if f.name in set(_TYPED_FIELD.values()))


def wire_tensor(tensor: tensor_pb2.Tensor, field: str) -> WireTensor:
    """Check the envelope (dtype known, one value form) and wrap without copying ``content``."""
    dtype = DTYPE_FROM_PB.get(tensor.dtype)
    if dtype is None:
        raise InvalidArgument.field(f"{field}.dtype", "dtype is unspecified or unknown")
    typed = _TYPED_FIELD[dtype]
    # Field by field rather than through ListFields(), which would copy ``content`` (this is the Predict path).
    for name in _TYPED_FIELD_ORDER:
        if name != typed and len(getattr(tensor, name)):
            raise InvalidArgument.field(f"{field}.{name}", f"{dtype.value} values go in {typed}")
    content = tensor.content
    typed_values = getattr(tensor, typed)
    if content and len(typed_values):
        raise InvalidArgument.field(field, f"set either content or {typed}, not both")
    if dtype is DType.STRING and content:
        raise InvalidArgument.field(f"{field}.content", "string tensors use string_val")
    shape = tuple(tensor.shape)
    if content or not len(typed_values):
        return WireTensor(dtype, shape, content=content)
    return WireTensor(dtype, shape, values=typed_values)


def wire_tensors(tensors: Mapping[str, tensor_pb2.Tensor], field: str = "inputs") -> dict[str, WireTensor]:
    converted: dict[str, WireTensor] = {}
    violations: list[FieldViolation] = []
    for name, tensor in tensors.items():
        try:
            converted[name] = wire_tensor(tensor, f'{field}["{name}"]')
        except InvalidArgument as exc:
            violations += exc.violations
    if violations:
        raise InvalidArgument(f"{violations[0].field}: {violations[0].description}", violations)
    return converted


def uses_content(tensors: Mapping[str, WireTensor]) -> bool:
    return any(t.content is not None for t in tensors.values())


def fill_tensor(out: tensor_pb2.Tensor, array: np.ndarray, as_content: bool) -> None:
    """Write ``array`` into the protobuf ``out`` (a map entry, so it is filled in place)."""
    dtype = _dtype_of(array)
    out.dtype = DTYPE_TO_PB[dtype]
    out.shape.extend(array.shape)
    if dtype is DType.STRING:
        out.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel())
    elif as_content:
        out.content = np.ascontiguousarray(array, dtype=NUMPY_DTYPES[dtype]).tobytes()
    else:
        getattr(out, _TYPED_FIELD[dtype]).extend(array.ravel().tolist())


_DTYPE_OF_NUMPY: dict[np.dtype, DType] = {np.dtype(d.value): d for d in DType if d is not DType.STRING}


def _dtype_of(array: np.ndarray) -> DType:
    dtype = _DTYPE_OF_NUMPY.get(array.dtype)  # dtype objects hash by value; byte order included
    if dtype is not None:
        return dtype
    if array.dtype.kind in ("O", "S", "U"):
        return DType.STRING
    return DType(array.dtype.name)
