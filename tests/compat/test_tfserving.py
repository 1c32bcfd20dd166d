"""TF Serving's own client against a real Tensor Trigger server: ``tensorflow-serving-api`` stubs, unmodified.

Requests are built the way TF Serving clients build them (``tf.make_tensor_proto``) and answers read with
``tf.make_ndarray``. The stubs are synchronous, so each call runs in a thread: the server runs on this event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.api.helpers import violations
from tests.compat.helpers import Served, grpcurl, keras_half, keras_outputs, vocab_indices
from tt_server.app import Application

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


@pytest.fixture(scope="module")
def tfs_channel(app: Application) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(app.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def prediction(tfs_channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(tfs_channel)


@pytest.fixture(scope="module")
def model_service(tfs_channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(tfs_channel)


async def call(method: Callable[..., Any], request: Any) -> Any:
    return await asyncio.to_thread(method, request, timeout=60)


async def call_error(method: Callable[..., Any], request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        await call(method, request)
    return err.value


def predict_request(
    name: str,
    inputs: dict[str, Any],
    version: int | None = None,
    label: str | None = None,
    signature: str = "",
    output_filter: tuple[str, ...] = (),
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(output_filter=output_filter)
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        proto = value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        request.inputs[key].CopyFrom(proto)
    return request


def typed(dtype: int, shape: tuple[int, ...], **values: Any) -> tensor_pb2.TensorProto:
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape]
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims), **values)


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= 1e-5


async def test_predict_raw_content_equals_keras_on_newest_version(prediction, served: Served) -> None:
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    response = await call(prediction.Predict, predict_request(served.mlp, {"features": x}))
    assert response.model_spec.name == served.mlp
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    out = response.outputs["score"]
    assert out.dtype == types_pb2.DT_FLOAT and out.tensor_content  # numbers answer in tensor_content
    assert_close(tf.make_ndarray(out), keras_outputs(served.files["mlp_v2"], x)["score"])


async def test_version_and_label_select_the_version(prediction, served: Served) -> None:
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    v1 = keras_outputs(served.files["mlp_v1"], x)["score"]
    v2 = keras_outputs(served.files["mlp_v2"], x)["score"]
    assert np.max(np.abs(v1 - v2)) > 1e-3  # the two versions really differ
    for spec, expected, number in (({"version": 1}, v1, 1), ({"label": "stable"}, v1, 1), ({"version": 2}, v2, 2)):
        response = await call(prediction.Predict, predict_request(served.mlp, {"features": x}, **spec))
        assert response.model_spec.version.value == number
        assert_close(tf.make_ndarray(response.outputs["score"]), expected)


async def test_typed_values_and_tensorflow_padding(prediction, served: Served) -> None:
    x = np.random.default_rng(2).normal(size=(2, 4)).astype(np.float32)
    as_float_val = typed(types_pb2.DT_FLOAT, (2, 4), float_val=x.ravel().tolist())
    response = await call(prediction.Predict, predict_request(served.mlp, {"features": as_float_val}))
    assert_close(tf.make_ndarray(response.outputs["score"]), keras_outputs(served.files["mlp_v2"], x)["score"])
    # make_tensor_proto(scalar, shape) sends one float_val for the whole tensor; TensorFlow repeats the last.
    padded = tf.make_tensor_proto(0.5, shape=[3, 4])
    assert list(padded.float_val) == [0.5]
    response = await call(prediction.Predict, predict_request(served.mlp, {"features": padded}))
    expected = keras_outputs(served.files["mlp_v2"], np.full((3, 4), 0.5, np.float32))["score"]
    assert_close(tf.make_ndarray(response.outputs["score"]), expected)


async def test_two_inputs_int_val_and_output_filter(prediction, served: Served) -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.integers(0, 10, size=(4, 2)).astype(np.int32)
    expected = keras_outputs(served.files["two_io"], a, b)
    inputs = {"a": a, "b": typed(types_pb2.DT_INT32, (4, 2), int_val=b.ravel().tolist())}
    response = await call(prediction.Predict, predict_request(served.two_io, inputs))
    assert set(response.outputs) == {"probs", "value"}
    for name in ("probs", "value"):
        assert_close(tf.make_ndarray(response.outputs[name]), expected[name])
    filtered = await call(prediction.Predict, predict_request(served.two_io, inputs, output_filter=("value",)))
    assert set(filtered.outputs) == {"value"}


async def test_strings_in_string_val_int64_out(prediction, served: Served) -> None:
    colors = [b"red", b"blue", b"pink"]
    response = await call(prediction.Predict, predict_request(served.vocab, {"color": tf.make_tensor_proto(colors)}))
    out = response.outputs["index"]
    assert out.dtype == types_pb2.DT_INT64
    np.testing.assert_array_equal(tf.make_ndarray(out), vocab_indices(colors))


async def test_float16_in_content_and_half_val(prediction, served: Served) -> None:
    x = np.array([[0.5, -1.25], [2.0, 3.0], [0.0, 1.0]], np.float16)
    expected = keras_half(served.files["half"], x)
    as_content = tf.make_tensor_proto(x)  # DT_HALF in tensor_content
    as_half_val = typed(types_pb2.DT_HALF, (3, 2), half_val=x.view(np.uint16).ravel().tolist())
    for proto in (as_content, as_half_val):
        response = await call(prediction.Predict, predict_request(served.half, {"h": proto}))
        out = response.outputs["half_out"]
        assert out.dtype == types_pb2.DT_HALF
        got = tf.make_ndarray(out)
        assert got.dtype == np.float16
        assert_close(got.astype(np.float32), expected.astype(np.float32))


async def test_signature_name(prediction, served: Served) -> None:
    x = {"features": np.zeros((1, 4), np.float32)}
    response = await call(prediction.Predict, predict_request(served.mlp, x, signature="serving_default"))
    assert response.model_spec.signature_name == "serving_default"
    error = await call_error(prediction.Predict, predict_request(served.mlp, x, signature="classify"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION  # what TF Serving answers for an unknown key
    assert 'Serving signature key "classify" not found' in error.details()


BAD_INPUTS: dict[str, tuple[dict[str, Any], tuple[str, ...], str]] = {
    "wrong dtype": ({"features": np.zeros((1, 4), np.int32)}, (), 'inputs["features"].dtype'),
    "wrong shape": ({"features": np.zeros((1, 5), np.float32)}, (), 'inputs["features"].shape[1]'),
    "wrong rank": ({"features": np.zeros((4,), np.float32)}, (), 'inputs["features"].shape'),
    "unknown input": (
        {"features": np.zeros((1, 4), np.float32), "extra": np.zeros((1,), np.float32)},
        (),
        'inputs["extra"]',
    ),
    "missing input": ({}, (), "inputs"),
    "unsupported dtype": ({"features": np.zeros((1, 4), np.complex64)}, (), 'inputs["features"].dtype'),
    "undefined dtype": ({"features": typed(167, (1, 4), float_val=[1, 2, 3, 4])}, (), 'inputs["features"].dtype'),
    "short content": (
        {"features": typed(types_pb2.DT_FLOAT, (2, 4), tensor_content=b"\0" * 12)},
        (),
        'inputs["features"].content',
    ),
    "values in the wrong field": (
        {"features": typed(types_pb2.DT_FLOAT, (1, 4), int_val=[1, 2, 3, 4])},
        (),
        'inputs["features"].int_val',
    ),
    "unknown output": ({"features": np.zeros((1, 4), np.float32)}, ("nope",), "output_filter[0]"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_inputs_are_invalid_argument_with_the_field(prediction, served: Served, case: str) -> None:
    inputs, output_filter, field = BAD_INPUTS[case]
    error = await call_error(prediction.Predict, predict_request(served.mlp, inputs, output_filter=output_filter))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    found = violations(error)  # type: ignore[arg-type]
    assert any(f.startswith(field) for f in found), (field, found)


async def test_unknown_model_version_label_not_found(prediction, served: Served) -> None:
    x = {"features": np.zeros((1, 4), np.float32)}
    for request in (
        predict_request("no-such-model", x),
        predict_request(served.mlp, x, version=99),
        predict_request(served.mlp, x, label="nolabel"),
    ):
        assert (await call_error(prediction.Predict, request)).code() == grpc.StatusCode.NOT_FOUND
    missing_name = await call_error(prediction.Predict, predict_request("", x))
    assert missing_name.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model_spec.name" in violations(missing_name)  # type: ignore[arg-type]


async def test_get_model_metadata_returns_the_signature_def_map(prediction, served: Served) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = served.two_io
    response = await call(prediction.GetModelMetadata, request)
    assert (response.model_spec.name, response.model_spec.version.value) == (served.two_io, 1)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    definition = signatures.signature_def["serving_default"]
    assert definition.method_name == "tensorflow/serving/predict"
    assert {k: (v.dtype, [d.size for d in v.tensor_shape.dim]) for k, v in definition.inputs.items()} == {
        "a": (types_pb2.DT_FLOAT, [-1, 3]),
        "b": (types_pb2.DT_INT32, [-1, 2]),
    }
    assert {k: [d.size for d in v.tensor_shape.dim] for k, v in definition.outputs.items()} == {
        "probs": [-1, 3],
        "value": [-1, 1],
    }

    request.model_spec.version.value = 1
    request.model_spec.name = served.mlp
    response = await call(prediction.GetModelMetadata, request)
    assert response.model_spec.version.value == 1

    no_field = get_model_metadata_pb2.GetModelMetadataRequest()
    no_field.model_spec.name = served.mlp
    assert (await call_error(prediction.GetModelMetadata, no_field)).code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    unknown.model_spec.name = "no-such-model"
    assert (await call_error(prediction.GetModelMetadata, unknown)).code() == grpc.StatusCode.NOT_FOUND


async def test_get_model_status(model_service, served: Served) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = served.mlp
    response = await call(model_service.GetModelStatus, request)
    assert [(s.version, s.state, s.status.error_code) for s in response.model_version_status] == [
        (1, AVAILABLE, 0),
        (2, AVAILABLE, 0),
    ]
    request.model_spec.version.value = 1
    response = await call(model_service.GetModelStatus, request)
    assert [(s.version, s.state) for s in response.model_version_status] == [(1, AVAILABLE)]
    request.model_spec.version.value = 99
    assert (await call_error(model_service.GetModelStatus, request)).code() == grpc.StatusCode.NOT_FOUND
    unknown = get_model_status_pb2.GetModelStatusRequest()
    unknown.model_spec.name = "no-such-model"
    assert (await call_error(model_service.GetModelStatus, unknown)).code() == grpc.StatusCode.NOT_FOUND


async def test_a_bad_model_name_is_reported_on_the_model_spec(prediction, model_service) -> None:
    # The registry's naming rule, reported on TF Serving's own field (not the native API's model.name).
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "../etc/passwd"
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "../etc/passwd"
    labelled = get_model_status_pb2.GetModelStatusRequest()
    labelled.model_spec.name = "../etc/passwd"
    labelled.model_spec.version_label = "prod"
    for method, request in (
        (prediction.GetModelMetadata, metadata),
        (model_service.GetModelStatus, status),
        (model_service.GetModelStatus, labelled),
    ):
        error = await call_error(method, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(violations(error)) == ["model_spec.name"]  # type: ignore[arg-type]
        assert (error.details() or "").startswith("model_spec.name: invalid model name")  # type: ignore[attr-defined]


async def test_classify_and_regress_say_why_they_are_unimplemented(prediction, served: Served) -> None:
    for method, request_type, kind in (
        (prediction.Classify, classification_pb2.ClassificationRequest, "classification signature"),
        (prediction.Regress, regression_pb2.RegressionRequest, "regression signature"),
    ):
        request = request_type()
        request.model_spec.name = served.mlp
        error = await call_error(method, request)
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert kind in error.details() and "Predict" in error.details()
        request.model_spec.name = "no-such-model"
        assert (await call_error(method, request)).code() == grpc.StatusCode.NOT_FOUND


async def test_grpcurl_through_reflection(app: Application, served: Served) -> None:
    code, out, err = await grpcurl("-plaintext", app.address, "list")
    assert code == 0, err
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"} <= set(out.split())

    status = json.dumps({"model_spec": {"name": served.mlp}})
    code, out, err = await grpcurl(
        "-plaintext", "-d", status, app.address, "tensorflow.serving.ModelService/GetModelStatus"
    )
    assert code == 0, err
    assert [s["state"] for s in json.loads(out)["model_version_status"]] == ["AVAILABLE", "AVAILABLE"]

    x = [0.1, 0.2, 0.3, 0.4]
    tensor = {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": 1}, {"size": 4}]}, "float_val": x}
    predict = json.dumps({"model_spec": {"name": served.mlp}, "inputs": {"features": tensor}})
    code, out, err = await grpcurl(
        "-plaintext", "-d", predict, app.address, "tensorflow.serving.PredictionService/Predict"
    )
    assert code == 0, err
    score = json.loads(out)["outputs"]["score"]
    assert score["dtype"] == "DT_FLOAT" and score["tensor_content"]
