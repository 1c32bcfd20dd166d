"""Per-model series (labels ``model`` and ``version``) move by the right amounts for every inference protocol,
count failures by status without letting random model names grow the series, vanish on unload and deletion,
and a call that asks for it gets its server timing in trailing metadata."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2 as tf_tensor_pb2
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tensortrigger.v1 import (
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_pb2,
    registry_service_pb2,
    registry_service_pb2_grpc,
    tensor_pb2,
)
from tritonclient.grpc import service_pb2 as oip_pb2
from tritonclient.grpc import service_pb2_grpc as oip_grpc

from tests import models
from tests.api.helpers import upload
from tests.api.scrape import Scrape, free_port, scrape
from tests.serving import server_settings
from tt_server import metrics
from tt_server.app import Application

QUEUE_ROWS = 4096


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Application, int]]:
    port = free_port()
    settings = server_settings(
        tmp_path_factory.mktemp("metered"),
        metrics_address=f"127.0.0.1:{port}",
        model_cache_max_versions=1,  # a second model evicts the first: its serving series must go
        batch_max_queue_rows=QUEUE_ROWS,
    )
    application = Application(settings)
    await application.start()
    yield application, port
    await application.stop(grace=1.0)


@pytest.fixture(scope="module")
async def channel(server: tuple[Application, int]) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server[0].address) as ch:
        yield ch


@pytest.fixture(scope="module")
async def model(channel: grpc.aio.Channel, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = f"obs-{uuid.uuid4().hex[:6]}"
    registry = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
    await upload(registry, name, models.mlp_keras(tmp_path_factory.mktemp("mlp")))
    return name


def _native(name: str, rows: int, version: int = 0) -> inference_service_pb2.PredictRequest:
    x = np.ones((rows, 4), np.float32)
    ref = model_pb2.ModelRef(name=name, version=version) if version else model_pb2.ModelRef(name=name)
    return inference_service_pb2.PredictRequest(
        model=ref,
        inputs={
            "features": tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[rows, 4], content=x.tobytes())
        },
    )


def _tfserving(name: str, rows: int, version: int = 0) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version:
        request.model_spec.version.value = version
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in (rows, 4)])
    request.inputs["features"].CopyFrom(
        tf_tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[0.5] * (rows * 4))
    )
    return request


def _oip(name: str, rows: int) -> oip_pb2.ModelInferRequest:
    request = oip_pb2.ModelInferRequest(model_name=name)
    contents = {"fp32_contents": [0.5] * (rows * 4)}
    request.inputs.add(name="features", datatype="FP32", shape=[rows, 4], contents=contents)
    return request


async def test_every_protocol_moves_the_per_model_series(
    server: tuple[Application, int], channel: grpc.aio.Channel, model: str
) -> None:
    port = server[1]
    native = inference_service_pb2_grpc.InferenceServiceStub(channel)
    await native.Predict(_native(model, 1))  # loads version 1
    before = await scrape(port)
    series = {"model": model, "version": "1"}

    await asyncio.gather(*(native.Predict(_native(model, 2)) for _ in range(5)))  # 5 requests, 10 rows

    async def chunks() -> AsyncIterator[inference_service_pb2.PredictBatchRequest]:
        for i in range(3):
            request = _native(model, 3)
            yield inference_service_pb2.PredictBatchRequest(
                model=request.model if i == 0 else None, inputs=request.inputs
            )

    answers = [r async for r in native.PredictBatch(chunks())]  # 3 requests, 9 rows
    assert len(answers) == 3
    await prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_tfserving(model, 4))  # 1, 4 rows
    oip = oip_grpc.GRPCInferenceServiceStub(channel)
    await oip.ModelInfer(_oip(model, 1))  # 1, 1 row
    wrong = _oip(model, 1)
    wrong.inputs[0].shape[:] = [1, 5]  # INVALID_ARGUMENT, reported inside the stream

    async def stream() -> AsyncIterator[oip_pb2.ModelInferRequest]:
        yield _oip(model, 2)
        yield wrong

    streamed = [r async for r in oip.ModelStreamInfer(stream())]  # 1 OK (2 rows), 1 failed
    assert [bool(r.error_message) for r in streamed] == [False, True]
    after = await scrape(port)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **series, **labels) - before.value(name, **series, **labels)

    assert moved("tt_model_requests_total", status="OK") == 11
    assert moved("tt_model_requests_total", status="INVALID_ARGUMENT") == 1
    assert moved("tt_model_rows_total") == 26
    assert moved("tt_model_request_duration_seconds_count") == 12
    assert moved("tt_model_queue_duration_seconds_count") == 11
    assert moved("tt_batch_rows_sum") == 26
    calls = moved("tt_model_calls_total")
    assert 1 <= calls <= 11
    assert moved("tt_model_call_duration_seconds_count") == calls == moved("tt_batch_rows_count")
    assert moved("tt_batch_requests_sum") == 11
    assert moved("tt_model_decode_seconds_total") > 0
    assert moved("tt_model_encode_seconds_total") > 0
    assert moved("tt_model_call_duration_seconds_sum") > 0
    # The request's time in the server holds its time in the queue and in its model call.
    assert moved("tt_model_request_duration_seconds_sum") > moved("tt_model_queue_duration_seconds_sum")
    assert after.value("tt_model_loaded", **series) == 1
    assert after.value("tt_model_memory_bytes", **series) > 0
    assert after.value("tt_batch_queue_capacity_rows", **series) == QUEUE_ROWS
    assert after.value("tt_model_loads_total", **series) == 1
    assert after.value("tt_model_load_duration_seconds_count", **series) == 1
    assert after.has("tt_batch_queue_rows", **series)
    assert not after.has("tt_model_requests_total", status="OK", version="")


async def test_failures_by_status_and_the_overflow_bucket(
    server: tuple[Application, int], channel: grpc.aio.Channel, model: str
) -> None:
    _, port = server
    native = inference_service_pb2_grpc.InferenceServiceStub(channel)
    tfs = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    oip = oip_grpc.GRPCInferenceServiceStub(channel)
    await native.Predict(_native(model, 1))
    before = await scrape(port)
    bad = _native(model, 2)
    bad.inputs["features"].shape[:] = [2, 5]  # the content no longer matches: INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await native.Predict(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tfs.Predict(_tfserving(model, 1, version=99))  # a version that does not exist, of a loaded model
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    random_names = [f"nope-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    for name in random_names:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await native.Predict(_native(name, 1))
        with contextlib.suppress(grpc.aio.AioRpcError):
            await oip.ModelInfer(_oip(name, 1))
    after = await scrape(port)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("tt_model_requests_total", model=model, version="1", status="INVALID_ARGUMENT") == 1
    assert moved("tt_model_requests_total", model=model, version="", status="NOT_FOUND") == 1
    assert moved("tt_model_requests_total", model=metrics.OTHER_MODEL, version="", status="NOT_FOUND") == 40
    assert not after.label_values("model") & set(random_names)
    assert moved("tt_model_request_duration_seconds_count", model=metrics.OTHER_MODEL, version="") == 40


async def test_names_of_models_not_loaded_are_capped(
    server: tuple[Application, int], channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failures other than NOT_FOUND for models with no loaded version get their own series (version "") up to
    the cap; past it they go to the overflow bucket."""
    port = server[1]
    native = inference_service_pb2_grpc.InferenceServiceStub(channel)
    monkeypatch.setattr(metrics, "MAX_UNLOADED_MODELS", len(metrics._unloaded_names) + 2)
    names = [f"capped-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
    before = await scrape(port)
    for name in names:
        malformed = inference_service_pb2.PredictRequest(
            model=model_pb2.ModelRef(name=name),
            inputs={"x": tensor_pb2.Tensor(shape=[1])},  # no dtype
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await native.Predict(malformed)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = await scrape(port)
    for name in names[:2]:
        assert after.value("tt_model_requests_total", model=name, version="", status="INVALID_ARGUMENT") == 1
    assert not after.label_values("model") & set(names[2:])
    other = {"model": metrics.OTHER_MODEL, "version": "", "status": "INVALID_ARGUMENT"}
    assert after.value("tt_model_requests_total", **other) - before.value("tt_model_requests_total", **other) == 3


async def test_timing_trailer_on_request(channel: grpc.aio.Channel, model: str) -> None:
    native = inference_service_pb2_grpc.InferenceServiceStub(channel)
    call = native.Predict(_native(model, 3), metadata=(("x-tt-timing", "1"),))
    await call
    timing = _server_timing(await call.trailing_metadata())
    assert set(timing) == {"queue", "compute", "decode", "encode", "total"}
    assert timing["compute"] > 0
    assert timing["total"] >= timing["queue"] + timing["compute"] + timing["decode"] + timing["encode"]
    assert all(v >= 0 for v in timing.values())

    untimed = native.Predict(_native(model, 1))
    await untimed
    assert "server-timing" not in {k for k, _ in await untimed.trailing_metadata()}

    # A failed call asked for timing gets it too, with its request id.
    bad = _native(model, 1)
    bad.inputs["features"].shape[:] = [1, 5]
    failing = native.Predict(bad, metadata=(("x-tt-timing", "1"),))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await failing
    trailers = dict(err.value.trailing_metadata() or ())
    assert "x-request-id" in trailers
    assert _server_timing(tuple(trailers.items()))["total"] > 0


def _server_timing(trailers: object) -> dict[str, float]:
    header = dict(trailers)["server-timing"]  # type: ignore[call-overload]
    parts = (part.strip().split(";dur=") for part in header.split(","))
    return {name: float(ms) for name, ms in parts}


async def test_series_vanish_on_unload_and_delete(
    server: tuple[Application, int], channel: grpc.aio.Channel, model: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    app, port = server
    native = inference_service_pb2_grpc.InferenceServiceStub(channel)
    registry = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
    await native.Predict(_native(model, 1))
    assert (await scrape(port)).has("tt_model_loaded", model=model, version="1")

    other = f"obs-other-{uuid.uuid4().hex[:6]}"
    await upload(registry, other, models.mlp_keras(tmp_path_factory.mktemp("other")))
    await native.Predict(_native(other, 1))  # the cache holds one version: the first is evicted
    evicted = await scrape(port)
    assert evicted.has("tt_model_loaded", model=other, version="1")
    serving = [
        "tt_model_loaded",
        "tt_model_memory_bytes",
        "tt_model_rows_total",
        "tt_model_calls_total",
        "tt_batch_rows_count",
        "tt_model_request_duration_seconds_count",
        "tt_batch_queue_rows",
        "tt_model_requests_total",
    ]
    for name in serving:
        assert not evicted.has(name, model=model, version="1"), name
    # Its lifecycle stays (the version still exists), with the reason it went.
    assert evicted.value("tt_model_loads_total", model=model, version="1") == 1
    assert evicted.value("tt_model_unloads_total", model=model, version="1", reason="least recently used") == 1

    await registry.DeleteModel(registry_service_pb2.DeleteModelRequest(name=model))
    for _ in range(50):  # the deletion reaches the manager as a registry event
        deleted = await scrape(port)
        if model not in deleted.label_values("model"):
            break
        await asyncio.sleep(0.1)
    assert model not in deleted.label_values("model")
    assert deleted.has("tt_model_loaded", model=other, version="1")
    assert app.models.loaded_versions == [(other, 1)]


def test_scrape_helper_reads_labels() -> None:
    """The parser the tests rely on: a sample's labels and value, summed over matching samples."""
    from tests.api.scrape import parse

    got: Scrape = parse('a_total{model="m",version="1"} 2\na_total{model="m",version="2"} 3\n')
    assert got.value("a_total", model="m") == 5
    assert got.value("a_total", version="2") == 3
    assert got.label_values("model") == {"m"}
