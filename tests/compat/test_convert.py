"""The compat converters alone (no server): the envelope rules and encodings that end-to-end tests reach rarely."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from tt_server.compat import kserve, tfserving
from tt_server.errors import FailedPrecondition, InvalidArgument
from tt_server.runtime.validation import InputDecoder
from tt_server.types import DType, ModelRef, Signature, TensorSpec, WireTensor


def proto(dtype: int, shape: tuple[int, ...], **values: object) -> tensor_pb2.TensorProto:
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape]
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims), **values)


def decoded(tensor: WireTensor, shape: tuple[int, ...]) -> np.ndarray:
    """What the validator makes of ``tensor`` for an input ``x`` of the same dtype and ``shape``."""
    decoder = InputDecoder(Signature((TensorSpec("x", tensor.dtype, shape),), ()), 1000, 10_000)
    return decoder.decode({"x": tensor})[0]["x"]


def field_of(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    return error.value.violations[0].field


# --- TF Serving --------------------------------------------------------------------------------------------
def test_tensor_content_passes_as_raw_bytes() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    wire = tfserving.wire_tensor(tf.make_tensor_proto(x), "x", 100)
    assert (wire.dtype, wire.shape, wire.content) == (DType.FLOAT32, (2, 4), x.tobytes())
    np.testing.assert_array_equal(decoded(wire, (-1, 4)), x)


@pytest.mark.parametrize(
    ("dtype", "field", "values", "domain"),
    [
        (types_pb2.DT_FLOAT, "float_val", [1.5, -2.0], DType.FLOAT32),
        (types_pb2.DT_DOUBLE, "double_val", [1.5, -2.0], DType.FLOAT64),
        (types_pb2.DT_INT8, "int_val", [-128, 127], DType.INT8),
        (types_pb2.DT_INT16, "int_val", [-300, 300], DType.INT16),
        (types_pb2.DT_INT32, "int_val", [-(2**31), 2**31 - 1], DType.INT32),
        (types_pb2.DT_UINT8, "int_val", [0, 255], DType.UINT8),
        (types_pb2.DT_INT64, "int64_val", [-(2**63), 2**63 - 1], DType.INT64),
        (types_pb2.DT_BOOL, "bool_val", [True, False], DType.BOOL),
        (types_pb2.DT_STRING, "string_val", [b"a", b""], DType.STRING),
    ],
)
def test_typed_fields(dtype: int, field: str, values: list, domain: DType) -> None:
    wire = tfserving.wire_tensor(proto(dtype, (2,), **{field: values}), "x", 100)
    assert wire.dtype is domain
    assert decoded(wire, (-1,)).tolist() == values


def test_half_val_holds_bit_patterns() -> None:
    x = np.array([0.5, -1.25, 65504, np.inf], np.float16)
    wire = tfserving.wire_tensor(proto(types_pb2.DT_HALF, (4,), half_val=x.view(np.uint16).tolist()), "x", 100)
    np.testing.assert_array_equal(decoded(wire, (-1,)), x)
    with pytest.raises(InvalidArgument) as err:
        tfserving.wire_tensor(proto(types_pb2.DT_HALF, (1,), half_val=[70000]), "x", 100)
    assert field_of(err) == "x.half_val"


def test_short_typed_values_repeat_the_last_like_tensorflow() -> None:
    wire = tfserving.wire_tensor(proto(types_pb2.DT_INT32, (2, 3), int_val=[7, 9]), "x", 100)
    np.testing.assert_array_equal(decoded(wire, (-1, 3)), [[7, 9, 9], [9, 9, 9]])
    half = tfserving.wire_tensor(tf.make_tensor_proto(np.float16(1.5), shape=[3]), "x", 100)
    np.testing.assert_array_equal(decoded(half, (-1,)), np.full(3, 1.5, np.float16))
    # Never padded past the element cap: a tiny message must not become a huge array before validation.
    capped = tfserving.wire_tensor(proto(types_pb2.DT_FLOAT, (10**12,), float_val=[1.0]), "x", 100)
    assert len(capped.values) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tensor", "field"),
    [
        (proto(types_pb2.DT_COMPLEX64, (1,), scomplex_val=[1, 2]), "x.dtype"),
        (proto(types_pb2.DT_INVALID, (1,)), "x.dtype"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"unknown_rank": True}), "x.tensor_shape"),
        (proto(types_pb2.DT_STRING, (1,), tensor_content=b"abc"), "x.tensor_content"),
        (proto(types_pb2.DT_FLOAT, (1,), double_val=[1.0]), "x.double_val"),
    ],
)
def test_bad_envelopes(tensor: tensor_pb2.TensorProto, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        tfserving.wire_tensor(tensor, "x", 100)
    assert field_of(err) == field


def test_every_bad_input_is_reported_at_once() -> None:
    inputs = {"a": proto(types_pb2.DT_COMPLEX64, (1,)), "b": proto(types_pb2.DT_FLOAT, (1,), int_val=[1])}
    with pytest.raises(InvalidArgument) as err:
        tfserving.wire_tensors(inputs, 100)
    assert [v.field for v in err.value.violations] == ['inputs["a"].dtype', 'inputs["b"].int_val']


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([1.5, 2.5], np.float16),
        np.array([[-(2**62)]], np.int64),
        np.array([True, False]),
        np.array([3], np.uint8),
        np.array([b"x", b"yz"], dtype=object),
    ],
)
def test_outputs_round_trip_through_make_ndarray(array: np.ndarray) -> None:
    out = tensor_pb2.TensorProto()
    tfserving.fill_tensor_proto(out, array)
    back = tf.make_ndarray(out)
    assert back.shape == array.shape
    assert back.tolist() == array.tolist()
    assert bool(out.tensor_content) is (array.dtype != object)  # numbers in tensor_content, strings in string_val


def test_model_spec_mapping() -> None:
    spec = model_pb2.ModelSpec(name="m")
    assert tfserving.spec_ref(spec) == ModelRef("m")
    spec.version.value = 3
    assert tfserving.spec_ref(spec) == ModelRef("m", version=3)
    spec.version_label = "stable"
    assert tfserving.spec_ref(spec) == ModelRef("m", label="stable")
    for bad, field in (
        (model_pb2.ModelSpec(), "model_spec.name"),
        (model_pb2.ModelSpec(name="m", version={"value": 0}), "model_spec.version"),
        (model_pb2.ModelSpec(name="m", version_label=""), None),
    ):
        if field is None:
            assert tfserving.spec_ref(bad) == ModelRef("m")  # an empty label is no choice at all in proto3
            continue
        with pytest.raises(InvalidArgument) as err:
            tfserving.spec_ref(bad)
        assert field_of(err) == field
    tfserving.check_signature(model_pb2.ModelSpec(signature_name="serving_default"))
    with pytest.raises(FailedPrecondition):
        tfserving.check_signature(model_pb2.ModelSpec(signature_name="predict"))


def test_signature_def_map_unpacks() -> None:
    signature = Signature((TensorSpec("x", DType.STRING, (-1,)),), (TensorSpec("y", DType.FLOAT16, (-1, 2)),))
    packed = tfserving.signature_def_map(signature)
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signatures = get_model_metadata_pb2.SignatureDefMap()
    packed.Unpack(signatures)
    definition = signatures.signature_def["serving_default"]
    assert definition.inputs["x"].dtype == types_pb2.DT_STRING
    assert [d.size for d in definition.outputs["y"].tensor_shape.dim] == [-1, 2]


# --- Open Inference Protocol -------------------------------------------------------------------------------
def test_raw_bytes_match_tritons_encoding() -> None:
    items = np.array([b"", b"red", "naïve".encode(), b"\x00\xff"], dtype=object)
    raw = serialize_byte_tensor(items).item()
    assert kserve.split_bytes(raw, "x", 4) == list(items)
    assert kserve.join_bytes(items) == raw
    assert deserialize_bytes_tensor(kserve.join_bytes(items)).tolist() == list(items)
    for truncated in (raw[:2], raw[:-1]):
        with pytest.raises(InvalidArgument):
            kserve.split_bytes(truncated, "x", 4)
    with pytest.raises(InvalidArgument):
        kserve.split_bytes(b"\0" * 4 * 1000, "x", 3)  # a thousand empty strings for a shape of three


@pytest.mark.parametrize(
    ("version", "ref"),
    [
        ("", ModelRef("m")),
        ("3", ModelRef("m", version=3)),
        ("0", None),
        ("stable", ModelRef("m", label="stable")),  # a label: the protocol's version is a string
        ("Latest!", None),
        ("٣", None),
        ("9" * 30, None),
    ],
)
def test_model_version_strings(version: str, ref: ModelRef | None) -> None:
    if ref is not None:
        assert kserve.oip_ref("m", version, "name", "version") == ref
        return
    with pytest.raises(InvalidArgument) as err:
        kserve.oip_ref("m", version, "name", "version")
    assert field_of(err) == "version"


def test_answers_mirror_the_request_form() -> None:
    outputs = {
        "f": np.array([[1.5], [2.5]], np.float32),
        "b": np.array([True, False]),
        "u": np.array([255], np.uint8),
        "i": np.array([-(2**40)], np.int64),
        "s": np.array([b"x"], dtype=object),
    }
    typed = kserve.infer_response(pb.ModelInferRequest(id="7"), "m", 3, outputs)
    assert (typed.model_name, typed.model_version, typed.id, len(typed.raw_output_contents)) == ("m", "3", "7", 0)
    by_name = {o.name: o for o in typed.outputs}
    assert [o.datatype for o in typed.outputs] == ["FP32", "BOOL", "UINT8", "INT64", "BYTES"]
    assert list(by_name["f"].contents.fp32_contents) == [1.5, 2.5] and list(by_name["f"].shape) == [2, 1]
    assert list(by_name["b"].contents.bool_contents) == [True, False]
    assert list(by_name["u"].contents.uint_contents) == [255]
    assert list(by_name["i"].contents.int64_contents) == [-(2**40)]
    assert list(by_name["s"].contents.bytes_contents) == [b"x"]

    raw = kserve.infer_response(pb.ModelInferRequest(raw_input_contents=[b""]), "m", 3, outputs)
    assert len(raw.raw_output_contents) == len(raw.outputs) == 5
    assert raw.raw_output_contents[0] == outputs["f"].tobytes()
    assert all(not o.HasField("contents") for o in raw.outputs)
    # FP16 has no typed field: the whole answer goes raw, since raw contents pair with outputs by position.
    half = kserve.infer_response(pb.ModelInferRequest(), "m", 1, {"h": np.ones(2, np.float16), **outputs})
    assert len(half.raw_output_contents) == 6


def test_inputs_typed_and_raw() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="a", datatype="INT16", shape=[2]).contents.int_contents.extend([1, -2])
    request.inputs.add(name="s", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"q")
    wires = kserve.wire_tensors(request, 100)
    assert decoded(wires["a"], (-1,)).tolist() == [1, -2]
    assert decoded(wires["s"], (-1,)).tolist() == [b"q"]

    raw = pb.ModelInferRequest(
        inputs=[{"name": "a", "datatype": "INT16", "shape": [2]}, {"name": "s", "datatype": "BYTES", "shape": [1]}],
        raw_input_contents=[np.array([1, -2], "<i2").tobytes(), kserve.join_bytes(np.array([b"q"], object))],
    )
    wires = kserve.wire_tensors(raw, 100)
    assert decoded(wires["a"], (-1,)).tolist() == [1, -2]
    assert decoded(wires["s"], (-1,)).tolist() == [b"q"]

    both = pb.ModelInferRequest(raw_input_contents=[b"\0\0"])
    both.inputs.add(name="a", datatype="INT16", shape=[1]).contents.int_contents.append(1)
    twice = pb.ModelInferRequest()
    for _ in range(2):
        twice.inputs.add(name="a", datatype="INT16", shape=[1]).contents.int_contents.append(1)
    for bad in (both, twice):
        with pytest.raises(InvalidArgument) as err:
            kserve.wire_tensors(bad, 100)
        assert err.value.violations[0].field.startswith('inputs["a"]')
