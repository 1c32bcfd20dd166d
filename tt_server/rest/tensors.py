"""JSON values <-> domain tensors, for the HTTP protocols (numbers as numpy arrays, strings as bytes).

Numbers become raw little-endian ``content`` at once (one numpy conversion, no per-element Python objects
afterwards); strings become typed ``values``. Shapes, dtypes and counts against the model stay the validator's
job (``runtime.validation``), as for gRPC: this reads the envelope only.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from tt_server.compat.convert import as_bytes, dtype_of
from tt_server.errors import InvalidArgument
from tt_server.formats.dtypes import NUMPY_DTYPES
from tt_server.types import DType, WireTensor

MAX_DEPTH = 32  # nesting deeper than any model's rank: refused before recursion gets expensive


def numeric_array(value: Any, dtype: DType, path: str) -> np.ndarray:
    """``value`` (a number or nested lists of them) as an array of ``dtype``; INVALID_ARGUMENT if it is not one."""
    target = NUMPY_DTYPES[dtype]
    try:
        # Read as JSON gave it first, then cast: asked for floats at once, numpy would take null as NaN and "1.5"
        # as 1.5. An integer too large for int64 makes an object array; such numbers are still numbers. A number
        # too large for float16/32 becomes inf, as numpy reads it (without its overflow warning).
        with np.errstate(over="ignore"):
            array = np.asarray(value)
            if array.dtype.kind == "O" and all(type(x) in (int, float) for x in array.flat):
                return np.asarray(value, dtype=target)  # OverflowError for an integer type too small
            if array.dtype.kind not in "biuf":
                found = "string" if array.dtype.kind == "U" else "null or object"
                raise TypeError(f"found {found} values")
            if target.kind in "iu" and array.size:
                if array.dtype.kind == "f" and not np.isfinite(array).all():
                    raise ValueError(f"NaN or infinity is not {dtype.value}")
                info = np.iinfo(target)
                if array.min() < info.min or array.max() > info.max:
                    raise OverflowError(f"values out of {dtype.value}'s range")
            return array.astype(target, copy=False)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidArgument.field(path, f"not {dtype.value} values of a regular (rectangular) shape: {e}") from None


def string_elements(value: Any, path: str) -> tuple[list[bytes], tuple[int, ...]]:
    """Strings (or ``{"b64": "..."}`` for binary data, TF Serving's form) in nested lists: flat bytes and shape."""
    flat: list[bytes] = []

    def walk(item: Any, depth: int) -> tuple[int, ...]:
        if not isinstance(item, list):
            flat.append(string_value(item, path))
            return ()
        if depth >= MAX_DEPTH:
            raise InvalidArgument.field(path, f"nested deeper than {MAX_DEPTH} levels")
        shapes = [walk(x, depth + 1) for x in item]
        if any(s != shapes[0] for s in shapes):
            raise InvalidArgument.field(path, "lists of different lengths or depths: the shape must be rectangular")
        return (len(item), *(shapes[0] if shapes else ()))

    shape = walk(value, 0)
    return flat, shape


def string_value(item: Any, path: str) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
        try:
            return base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument.field(path, "a b64 value is not valid base64") from None
    raise InvalidArgument.field(path, f"expected a string or {{'b64': ...}}, got {type(item).__name__}")


def wire_from_json(value: Any, dtype: DType, path: str) -> WireTensor:
    """A tensor whose shape is the JSON value's nesting (TF Serving's form)."""
    if dtype is DType.STRING:
        flat, shape = string_elements(value, path)
        return WireTensor(dtype, shape, values=flat)
    array = numeric_array(value, dtype, path)
    return WireTensor(dtype, array.shape, content=array.tobytes())


def wire_with_shape(data: Any, dtype: DType, shape: tuple[int, ...], path: str) -> WireTensor:
    """A tensor of a declared shape whose data may be flat or nested (the Open Inference Protocol's form)."""
    if dtype is DType.STRING:
        flat, _ = string_elements(data if isinstance(data, list) else [data], path)
        return WireTensor(dtype, shape, values=flat)
    return WireTensor(dtype, shape, content=numeric_array(data, dtype, path).tobytes())


def json_value(array: np.ndarray) -> Any:
    """An output as nested JSON lists (strings decoded as UTF-8, undecodable bytes as TF Serving's b64)."""
    if dtype_of(array) is DType.STRING:
        flat = [_text(as_bytes(v)) for v in array.ravel()]
        return np.array(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]
    return array.tolist()


def _text(data: bytes) -> Any:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode()}
