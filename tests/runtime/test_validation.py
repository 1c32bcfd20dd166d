"""Request tensors against a signature: the fast path decodes without copying, and every violation of a
bad request is reported at once with its field path."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tt_server.errors import InvalidArgument
from tt_server.runtime.validation import InputDecoder
from tt_server.types import DType, Signature, TensorSpec, WireTensor

SIG = Signature(
    inputs=(TensorSpec("x", DType.FLOAT32, (-1, 3)), TensorSpec("ids", DType.INT64, (-1, 2, -1))),
    outputs=(TensorSpec("y", DType.FLOAT32, (-1, 1)),),
)
MAX_ROWS = 100
MAX_ELEMENTS = 1000


def content(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def decode_inputs(
    signature: Signature, inputs: dict[str, WireTensor], max_batch_rows: int, max_elements: int
) -> dict[str, np.ndarray]:
    """One-shot decoding, as a test states it (the server holds one ``InputDecoder`` per servable)."""
    return InputDecoder(signature, max_batch_rows, max_elements).decode(inputs)[0]


def raw(dtype: DType, array: np.ndarray) -> WireTensor:
    return WireTensor(dtype, array.shape, content=content(array))


def good() -> dict[str, WireTensor]:
    return {
        "x": raw(DType.FLOAT32, np.arange(6, dtype=np.float32).reshape(2, 3)),
        "ids": raw(DType.INT64, np.arange(8, dtype=np.int64).reshape(2, 2, 2)),
    }


def decode(inputs: dict[str, WireTensor], signature: Signature = SIG) -> tuple[dict[str, np.ndarray], int]:
    return InputDecoder(signature, MAX_ROWS, MAX_ELEMENTS).decode(inputs)


def violations(inputs: dict[str, WireTensor], signature: Signature = SIG) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as info:
        decode(inputs, signature)
    return [(v.field, v.description) for v in info.value.violations]


def fields(inputs: dict[str, WireTensor], signature: Signature = SIG) -> list[str]:
    return [field for field, _ in violations(inputs, signature)]


def test_content_decodes_to_a_view_of_the_request_bytes() -> None:
    inputs = good()
    arrays, rows = decode(inputs)
    assert rows == 2
    np.testing.assert_array_equal(arrays["x"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert arrays["ids"].shape == (2, 2, 2) and arrays["ids"].dtype == np.int64
    # No copy: the array is a read-only window on the request's own bytes.
    assert arrays["x"].base is not None and not arrays["x"].flags.writeable
    assert np.shares_memory(arrays["x"], np.frombuffer(inputs["x"].content or b"", dtype=np.uint8))


def test_decode_inputs_function_returns_the_arrays() -> None:
    arrays = decode_inputs(SIG, good(), MAX_ROWS, MAX_ELEMENTS)
    assert set(arrays) == {"x", "ids"}


@pytest.mark.parametrize(
    ("dtype", "values", "expected"),
    [
        (DType.FLOAT16, [1.5, -2.0], np.array([1.5, -2.0], np.float16)),
        (DType.FLOAT32, [1.5, -2.0], np.array([1.5, -2.0], np.float32)),
        (DType.FLOAT64, [1.5, -2.0], np.array([1.5, -2.0], np.float64)),
        (DType.INT8, [-128, 127], np.array([-128, 127], np.int8)),
        (DType.INT16, [-300, 300], np.array([-300, 300], np.int16)),
        (DType.INT32, [-(2**31), 2**31 - 1], np.array([-(2**31), 2**31 - 1], np.int32)),
        (DType.INT64, [-(2**63), 2**63 - 1], np.array([-(2**63), 2**63 - 1], np.int64)),
        (DType.UINT8, [0, 255], np.array([0, 255], np.uint8)),
        (DType.BOOL, [True, False], np.array([True, False])),
    ],
)
def test_typed_values_and_content_decode_alike(dtype: DType, values: list, expected: np.ndarray) -> None:
    sig = Signature((TensorSpec("v", dtype, (-1,)),), ())
    typed, _ = decode({"v": WireTensor(dtype, (2,), values=values)}, sig)
    packed, _ = decode({"v": raw(dtype, expected)}, sig)
    for array in (typed["v"], packed["v"]):
        assert array.dtype == expected.dtype
        np.testing.assert_array_equal(array, expected)


def test_strings_take_typed_values_as_an_object_array_of_bytes() -> None:
    sig = Signature((TensorSpec("s", DType.STRING, (-1, 2)),), ())
    arrays, rows = decode({"s": WireTensor(DType.STRING, (2, 2), values=[b"a", b"bc", "d\u00e9", b""])}, sig)
    assert rows == 2
    assert arrays["s"].dtype == object
    assert arrays["s"].tolist() == [[b"a", b"bc"], ["d\u00e9".encode(), b""]]
    assert fields({"s": WireTensor(DType.STRING, (1, 2), content=b"ab")}, sig) == ['inputs["s"].content']
    assert fields({"s": WireTensor(DType.STRING, (1, 2), values=[b"a", 3])}, sig) == ['inputs["s"].values']


def test_nan_and_inf_are_data() -> None:
    sig = Signature((TensorSpec("v", DType.FLOAT32, (-1,)),), ())
    values = [math.nan, math.inf, -math.inf]
    arrays, _ = decode({"v": raw(DType.FLOAT32, np.array(values, np.float32))}, sig)
    assert np.isnan(arrays["v"][0]) and np.isposinf(arrays["v"][1]) and np.isneginf(arrays["v"][2])
    # float16 typed values beyond its range become infinities rather than an error (or a warning).
    sig16 = Signature((TensorSpec("v", DType.FLOAT16, (-1,)),), ())
    arrays, _ = decode({"v": WireTensor(DType.FLOAT16, (2,), values=[1e10, math.nan])}, sig16)
    assert np.isposinf(arrays["v"][0]) and np.isnan(arrays["v"][1])


def test_scalar_inputs_have_no_batch_dim() -> None:
    sig = Signature((TensorSpec("t", DType.FLOAT32, ()),), ())
    arrays, rows = decode({"t": WireTensor(DType.FLOAT32, (), values=[0.5])}, sig)
    assert rows == 1 and arrays["t"].shape == ()


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"extra": raw(DType.FLOAT32, np.zeros((2, 3), np.float32))}, 'inputs["extra"]', "unknown input"),
        ({"ids": None}, "inputs", "missing input(s): ids"),
        ({"x": raw(DType.FLOAT64, np.zeros((2, 3)))}, 'inputs["x"].dtype', "expected float32, got float64"),
        ({"x": raw(DType.FLOAT32, np.zeros((2, 3, 1), np.float32))}, 'inputs["x"].shape', "expected rank 2"),
        ({"x": WireTensor(DType.FLOAT32, (2, -3), content=b"")}, 'inputs["x"].shape[1]', "negative"),
        ({"x": raw(DType.FLOAT32, np.zeros((2, 4), np.float32))}, 'inputs["x"].shape[1]', "expected 3"),
        (
            {"x": WireTensor(DType.FLOAT32, (2, 3), content=b"\0" * 20)},
            'inputs["x"].content',
            "expected 24 bytes",
        ),
        (
            {"x": WireTensor(DType.FLOAT32, (2, 3), values=[1.0] * 5)},
            'inputs["x"].values',
            "expected 6 values",
        ),
        (
            {"x": WireTensor(DType.FLOAT32, (2, 3), values=["a"] * 6)},
            'inputs["x"].values',
            "not valid float32",
        ),
        (
            {"ids": raw(DType.INT64, np.zeros((3, 2, 1), np.int64))},
            'inputs["ids"].shape[0]',
            "batch size 3 differs",
        ),
    ],
)
def test_each_violation_names_its_field(change: dict, field: str, words: str) -> None:
    inputs = good()
    for name, tensor in change.items():
        if tensor is None:
            del inputs[name]
        else:
            inputs[name] = tensor
    found = violations(inputs)
    assert len(found) == 1, found
    assert found[0][0] == field
    assert words in found[0][1]


def test_batch_size_and_element_caps() -> None:
    sig = Signature((TensorSpec("v", DType.FLOAT32, (-1, -1)),), ())
    assert violations({"v": WireTensor(DType.FLOAT32, (0, 3), content=b"")}, sig) == [
        ('inputs["v"].shape[0]', "the batch is empty (0 rows)")
    ]
    over_rows = WireTensor(DType.FLOAT32, (MAX_ROWS + 1, 1), content=bytes(4 * (MAX_ROWS + 1)))
    assert fields({"v": over_rows}, sig) == ['inputs["v"].shape[0]']
    over_elements = WireTensor(DType.FLOAT32, (10, 101), content=b"")
    assert fields({"v": over_elements}, sig) == ['inputs["v"].shape']
    # A hostile shape whose product overflows 64 bits is simply over the cap (no wrap-around to small).
    huge = WireTensor(DType.FLOAT32, (2, 2**62, 2**62), content=b"")
    sig3 = Signature((TensorSpec("v", DType.FLOAT32, (-1, -1, -1)),), ())
    assert fields({"v": huge}, sig3) == ['inputs["v"].shape']


def test_narrow_ints_out_of_range_are_refused_not_wrapped() -> None:
    sig = Signature((TensorSpec("v", DType.INT8, (-1,)),), ())
    found = violations({"v": WireTensor(DType.INT8, (2,), values=np.array([1, 300], np.int32))}, sig)
    assert found == [('inputs["v"].values', "not valid int8 values: values must lie in [-128, 127]")]
    sig_u = Signature((TensorSpec("v", DType.UINT8, (-1,)),), ())
    assert fields({"v": WireTensor(DType.UINT8, (1,), values=[-1])}, sig_u) == ['inputs["v"].values']


def test_bool_content_must_be_zeros_and_ones() -> None:
    sig = Signature((TensorSpec("v", DType.BOOL, (-1,)),), ())
    assert fields({"v": WireTensor(DType.BOOL, (2,), content=b"\x01\x02")}, sig) == ['inputs["v"].content']


def test_every_violation_is_reported_at_once_in_order() -> None:
    inputs = {
        "zzz": raw(DType.FLOAT32, np.zeros((2, 3), np.float32)),  # unknown
        "x": WireTensor(DType.INT32, (2, 4, -1), content=b""),  # dtype, rank, negative dim
    }  # "ids" missing
    with pytest.raises(InvalidArgument) as info:
        decode(inputs)
    assert [v.field for v in info.value.violations] == [
        'inputs["zzz"]',
        "inputs",
        'inputs["x"].dtype',
        'inputs["x"].shape',
        'inputs["x"].shape[2]',
    ]
    assert info.value.message.startswith('inputs["zzz"]: unknown input')
    assert "(and 4 more)" in info.value.message


def test_several_inputs_each_with_problems() -> None:
    inputs = {
        "x": WireTensor(DType.FLOAT32, (0, 5), content=b""),  # fixed dim, empty batch
        "ids": WireTensor(DType.INT64, (2, 2, 1), content=b"\0" * 8),  # byte length
    }
    assert fields(inputs) == [
        'inputs["x"].shape[1]',
        'inputs["x"].shape[0]',
        'inputs["ids"].content',
    ]
