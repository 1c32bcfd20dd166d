"""InferenceService end to end on a real server: Predict and PredictBatch, answers equal in-process Keras."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import model_pb2, registry_service_pb2, tensor_pb2

from tests import models
from tests.api.helpers import upload, violations
from tests.serving import unique_name
from tt_server.app import Application

F32 = tensor_pb2.DATA_TYPE_FLOAT32


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("inference-models")
    export_dir = models.mlp_export_dir(out)
    return {
        "mlp": models.mlp_keras(out),
        "two_io": models.two_io_keras(out),
        "mlp_export_dir": export_dir,
        "mlp_saved_model": models.pack_tar_gz(export_dir, out / "mlp_sm.tar.gz"),
    }


@pytest.fixture(scope="module")
async def mlp(registry_stub, model_files) -> str:
    name = unique_name("mlp")
    await upload(registry_stub, name, model_files["mlp"], labels=["stable"])
    return name


def content(array: np.ndarray, dtype: int = F32) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(dtype=dtype, shape=array.shape, content=array.tobytes())


def decode(tensor: tensor_pb2.Tensor) -> np.ndarray:
    assert tensor.dtype == F32
    if tensor.content:
        return np.frombuffer(tensor.content, "<f4").reshape(tuple(tensor.shape))
    return np.asarray(tensor.float_val, np.float32).reshape(tuple(tensor.shape))


def reference(path: Path, *inputs: np.ndarray) -> np.ndarray | dict:
    model = keras.saving.load_model(path, compile=False)
    return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)


def ref_model(name: str, **kw: object) -> model_pb2.ModelRef:
    return model_pb2.ModelRef(name=name, **kw)  # type: ignore[arg-type]


async def test_predict_raw_and_typed_equal_keras(inference_stub, mlp, model_files) -> None:
    x = np.random.default_rng(0).normal(size=(17, 4)).astype(np.float32)
    expected = np.asarray(reference(model_files["mlp"], x))
    raw = await inference_stub.Predict(pb.PredictRequest(model=ref_model(mlp), inputs={"features": content(x)}))
    assert (raw.model_name, raw.model_version) == (mlp, 1)
    assert raw.outputs["score"].content  # mirrors the request's raw form
    np.testing.assert_allclose(decode(raw.outputs["score"]), expected, atol=1e-5)

    typed_in = tensor_pb2.Tensor(dtype=F32, shape=[17, 4], float_val=x.ravel().tolist())
    typed = await inference_stub.Predict(
        pb.PredictRequest(model=ref_model(mlp, label="stable"), inputs={"features": typed_in})
    )
    assert not typed.outputs["score"].content and len(typed.outputs["score"].float_val) == 17
    np.testing.assert_allclose(decode(typed.outputs["score"]), expected, atol=1e-5)

    forced = await inference_stub.Predict(
        pb.PredictRequest(
            model=ref_model(mlp), inputs={"features": content(x)}, output_encoding=tensor_pb2.TENSOR_ENCODING_TYPED
        )
    )
    assert len(forced.outputs["score"].float_val) == 17


async def test_nan_and_inf_are_data(inference_stub, mlp) -> None:
    x = np.array([[np.nan, 0, 0, 0], [np.inf, -np.inf, 0, 0]], np.float32)
    response = await inference_stub.Predict(pb.PredictRequest(model=ref_model(mlp), inputs={"features": content(x)}))
    assert decode(response.outputs["score"]).shape == (2, 1)


async def test_multi_input_output_and_filter(registry_stub, inference_stub, model_files) -> None:
    name = unique_name("two")
    await upload(registry_stub, name, model_files["two_io"])
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 3)).astype(np.float32)
    b = rng.integers(0, 5, size=(5, 2)).astype(np.int32)
    expected = reference(model_files["two_io"], a, b)
    response = await inference_stub.Predict(
        pb.PredictRequest(
            model=ref_model(name),
            inputs={"a": content(a), "b": content(b, tensor_pb2.DATA_TYPE_INT32)},
        )
    )
    assert set(response.outputs) == {"probs", "value"}
    np.testing.assert_allclose(decode(response.outputs["probs"]), np.asarray(expected["probs"]), atol=1e-5)
    np.testing.assert_allclose(decode(response.outputs["value"]), np.asarray(expected["value"]), atol=1e-5)
    filtered = await inference_stub.Predict(
        pb.PredictRequest(
            model=ref_model(name),
            inputs={"a": content(a), "b": content(b, tensor_pb2.DATA_TYPE_INT32)},
            output_filter=["value"],
        )
    )
    assert set(filtered.outputs) == {"value"}


async def test_saved_model_serves(registry_stub, inference_stub, model_files) -> None:
    name = unique_name("sm")
    await upload(registry_stub, name, model_files["mlp_saved_model"])
    x = np.ones((3, 4), np.float32)
    response = await inference_stub.Predict(pb.PredictRequest(model=ref_model(name), inputs={"features": content(x)}))
    exported = tf.saved_model.load(str(model_files["mlp_export_dir"]))
    expected = exported.signatures["serving_default"](features=tf.constant(x))["output_0"].numpy()
    np.testing.assert_allclose(decode(response.outputs["output_0"]), expected, atol=1e-5)


BAD_REQUESTS = {
    "wrong dtype": (
        {"features": tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_INT32, shape=[1, 4], int_val=[1] * 4)},
        'inputs["features"].dtype',
    ),
    "wrong rank": (
        {"features": tensor_pb2.Tensor(dtype=F32, shape=[4], float_val=[1] * 4)},
        'inputs["features"].shape',
    ),
    "wrong dim": (
        {"features": tensor_pb2.Tensor(dtype=F32, shape=[1, 5], float_val=[1] * 5)},
        'inputs["features"].shape[1]',
    ),
    "content length": (
        {"features": tensor_pb2.Tensor(dtype=F32, shape=[1, 4], content=b"\0" * 15)},
        'inputs["features"].content',
    ),
    "both forms": (
        {"features": tensor_pb2.Tensor(dtype=F32, shape=[1, 4], content=b"\0" * 16, float_val=[1] * 4)},
        'inputs["features"]',
    ),
    "negative dim": (
        {"features": tensor_pb2.Tensor(dtype=F32, shape=[-1, 4], content=b"")},
        'inputs["features"].shape[0]',
    ),
    "zero rows": ({"features": tensor_pb2.Tensor(dtype=F32, shape=[0, 4], content=b"")}, 'inputs["features"].shape[0]'),
    "unknown input": (
        {
            "features": tensor_pb2.Tensor(dtype=F32, shape=[1, 4], float_val=[1] * 4),
            "extra": tensor_pb2.Tensor(dtype=F32, shape=[1], float_val=[1]),
        },
        'inputs["extra"]',
    ),
    "missing input": ({}, "inputs"),
    "unspecified dtype": (
        {"features": tensor_pb2.Tensor(shape=[1, 4], content=b"\0" * 16)},
        'inputs["features"].dtype',
    ),
    "overflowing dims": (
        {"features": tensor_pb2.Tensor(dtype=F32, shape=[2**62, 2**62], content=b"")},
        'inputs["features"]',
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_tensors_are_invalid_argument_with_the_field(inference_stub, mlp, case) -> None:
    inputs, field = BAD_REQUESTS[case]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inference_stub.Predict(pb.PredictRequest(model=ref_model(mlp), inputs=inputs))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    found = violations(err.value)
    assert any(f.startswith(field) for f in found), (field, found)


async def test_unknown_output_filter_and_models(inference_stub, mlp) -> None:
    x = {"features": content(np.zeros((1, 4), np.float32))}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inference_stub.Predict(pb.PredictRequest(model=ref_model(mlp), inputs=x, output_filter=["nope"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output_filter[0]" in violations(err.value)
    for ref in (ref_model("no-such-model"), ref_model(mlp, version=99), ref_model(mlp, label="nolabel")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inference_stub.Predict(pb.PredictRequest(model=ref, inputs=x))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_batch_over_the_cap_and_oversized_message(app: Application, inference_stub, mlp) -> None:
    rows = app.settings.max_request_rows + 1
    x = tensor_pb2.Tensor(dtype=F32, shape=[rows, 4], content=b"\0" * (rows * 16))
    if len(x.content) < app.settings.max_message_bytes:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inference_stub.Predict(pb.PredictRequest(model=ref_model(mlp), inputs={"features": x}))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    huge = tensor_pb2.Tensor(dtype=F32, shape=[1, 4], content=b"\0" * (app.settings.max_message_bytes + 1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inference_stub.Predict(pb.PredictRequest(model=ref_model(mlp), inputs={"features": huge}))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_concurrent_calls_are_batched_and_correct(inference_stub, mlp, model_files) -> None:
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(200)]
    responses = await asyncio.gather(
        *(inference_stub.Predict(pb.PredictRequest(model=ref_model(mlp), inputs={"features": content(x)})) for x in xs)
    )
    expected = np.asarray(reference(model_files["mlp"], np.concatenate(xs)))
    got = np.concatenate([decode(r.outputs["score"]) for r in responses])
    np.testing.assert_allclose(got, expected, atol=1e-5)


async def test_thousand_concurrent_first_calls_load_once(
    app: Application, registry_stub, inference_stub, model_files
) -> None:
    name = unique_name("cold")
    await upload(registry_stub, name, model_files["mlp"])
    loads_before = app.models.loads_started
    x = {"features": content(np.ones((1, 4), np.float32))}
    responses = await asyncio.gather(
        *(inference_stub.Predict(pb.PredictRequest(model=ref_model(name), inputs=x)) for _ in range(1000))
    )
    assert len(responses) == 1000
    assert app.models.loads_started - loads_before == 1


async def test_label_move_and_delete_mid_traffic(registry_stub, inference_stub, tmp_path) -> None:
    from tests.runtime.helpers import constant_model

    name = unique_name("swap")
    paths = []
    for value in (1.0, 2.0):
        path = tmp_path / f"c{value}.keras"
        constant_model(value).save(path)
        paths.append(path)
    await upload(registry_stub, name, paths[0], labels=["stable"])
    await upload(registry_stub, name, paths[1])
    x = {"features": content(np.ones((1, 4), np.float32))}
    stop = asyncio.Event()
    answers: list[float] = []
    errors: list[grpc.StatusCode] = []

    async def traffic() -> None:
        while not stop.is_set():
            try:
                r = await inference_stub.Predict(pb.PredictRequest(model=ref_model(name, label="stable"), inputs=x))
                answers.append(float(decode(r.outputs["score"])[0, 0]))
            except grpc.aio.AioRpcError as e:
                errors.append(e.code())

    tasks = [asyncio.create_task(traffic()) for _ in range(8)]
    await asyncio.sleep(0.5)
    await registry_stub.SetLabel(registry_service_pb2.SetLabelRequest(name=name, label="stable", version=2))
    await asyncio.sleep(0.5)
    await registry_stub.DeleteModelVersion(registry_service_pb2.DeleteModelVersionRequest(name=name, version=1))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*tasks)
    assert not errors, errors
    assert answers[0] == 1.0 and answers[-1] == 2.0
    # Once the label moved, the old version never answers again.
    assert answers[answers.index(2.0) :] == [2.0] * len(answers[answers.index(2.0) :])
    # The deleted version is gone for explicit callers.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inference_stub.Predict(pb.PredictRequest(model=ref_model(name, version=1), inputs=x))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_model_deleted_mid_traffic_gives_not_found_not_crashes(
    registry_stub, inference_stub, model_files
) -> None:
    name = unique_name("gone")
    await upload(registry_stub, name, model_files["mlp"])
    x = {"features": content(np.ones((1, 4), np.float32))}
    codes: list[grpc.StatusCode] = []

    async def call() -> None:
        try:
            await inference_stub.Predict(pb.PredictRequest(model=ref_model(name), inputs=x))
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as e:
            codes.append(e.code())

    await call()
    calls = [asyncio.create_task(call()) for _ in range(100)]
    await registry_stub.DeleteModel(registry_service_pb2.DeleteModelRequest(name=name))
    calls += [asyncio.create_task(call()) for _ in range(20)]
    await asyncio.gather(*calls)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}
    assert codes[-1] == grpc.StatusCode.NOT_FOUND


async def test_predict_batch_answers_each_chunk_in_order(inference_stub, mlp, model_files) -> None:
    rng = np.random.default_rng(3)
    chunks = [rng.normal(size=(n, 4)).astype(np.float32) for n in (1, 1000, 7, 4096, 3)]

    async def requests():
        for i, x in enumerate(chunks):
            yield pb.PredictBatchRequest(
                model=ref_model(mlp) if i == 0 else None, inputs={"features": content(x)}, request_id=f"r{i}"
            )

    responses = [r async for r in inference_stub.PredictBatch(requests())]
    assert [r.request_id for r in responses] == [f"r{i}" for i in range(len(chunks))]
    assert [r.sequence for r in responses] == list(range(len(chunks)))
    expected = np.asarray(reference(model_files["mlp"], np.concatenate(chunks)))
    np.testing.assert_allclose(np.concatenate([decode(r.outputs["score"]) for r in responses]), expected, atol=1e-5)

    async def no_model():
        yield pb.PredictBatchRequest(inputs={"features": content(chunks[0])})

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in inference_stub.PredictBatch(no_model()):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_predict_batch_answers_chunks_before_a_bad_one_then_fails(inference_stub, mlp) -> None:
    good = np.ones((3, 4), np.float32)

    async def requests():
        yield pb.PredictBatchRequest(model=ref_model(mlp), inputs={"features": content(good)}, request_id="ok-0")
        yield pb.PredictBatchRequest(inputs={"features": content(good)}, request_id="ok-1")
        yield pb.PredictBatchRequest(inputs={"features": content(np.ones((3, 5), np.float32))}, request_id="bad")
        yield pb.PredictBatchRequest(inputs={"features": content(good)}, request_id="never")

    answered = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for response in inference_stub.PredictBatch(requests()):
            answered.append(response.request_id)
    assert answered == ["ok-0", "ok-1"]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'inputs["features"].shape[1]' in violations(err.value)


DTYPES = [
    tensor_pb2.DATA_TYPE_FLOAT16,
    F32,
    tensor_pb2.DATA_TYPE_FLOAT64,
    tensor_pb2.DATA_TYPE_INT32,
    tensor_pb2.DATA_TYPE_INT64,
    tensor_pb2.DATA_TYPE_BOOL,
    tensor_pb2.DATA_TYPE_STRING,
    0,
    99,
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(min_value=-3, max_value=2**40), max_size=4),
    data=st.binary(max_size=256),
    typed=st.booleans(),
    name=st.sampled_from(["features", "other", ""]),
)
async def test_random_requests_get_defined_statuses(app, inference_stub, mlp, dtype, shape, data, typed, name) -> None:
    tensor = tensor_pb2.Tensor(dtype=dtype, shape=shape)
    if typed:
        tensor.float_val.extend([0.5] * min(len(data), 64))
    else:
        tensor.content = data
    try:
        await inference_stub.Predict(pb.PredictRequest(model=ref_model(mlp), inputs={name: tensor}))
    except grpc.aio.AioRpcError as e:
        assert e.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}, e.details()


async def test_predict_batch_answers_before_the_next_chunk_is_sent(inference_stub, mlp) -> None:
    """Lock-step clients (send one chunk, wait for its answer) must work: the server never waits for later
    chunks before answering."""
    call = inference_stub.PredictBatch()
    for i in range(6):
        request = pb.PredictBatchRequest(inputs={"features": content(np.ones((2, 4), np.float32))}, request_id=str(i))
        if i == 0:
            request.model.CopyFrom(ref_model(mlp))
        await call.write(request)
        response = await asyncio.wait_for(call.read(), 10)
        assert response.request_id == str(i) and response.sequence == i
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF


async def test_predict_batch_read_ahead_never_overflows_the_queue(app: Application, inference_stub, mlp) -> None:
    """Big chunks sent back to back: read-ahead must not push the stream's own rows over the queue bound."""
    rows = app.settings.batch_max_queue_rows * 2 // 3
    x = np.ones((rows, 4), np.float32)

    async def requests():
        for i in range(4):
            yield pb.PredictBatchRequest(
                model=ref_model(mlp) if i == 0 else None, inputs={"features": content(x)}, request_id=str(i)
            )

    responses = [r async for r in inference_stub.PredictBatch(requests())]
    assert [r.request_id for r in responses] == ["0", "1", "2", "3"]
    assert all(tuple(r.outputs["score"].shape) == (rows, 1) for r in responses)
