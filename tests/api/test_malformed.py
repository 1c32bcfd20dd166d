"""Messages that do not parse, on every method of every service on the port: INVALID_ARGUMENT with the request id,
after authentication, counted in the metrics, logged at most once per interval and without a traceback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from tensortrigger.v1 import inference_service_pb2 as ipb
from tensortrigger.v1 import jobs_service_pb2 as jpb
from tensortrigger.v1 import model_pb2, registry_service_pb2_grpc, tensor_pb2
from tensortrigger.v1 import registry_service_pb2 as rpb
from tritonclient.grpc import service_pb2 as kpb

from tests.api.helpers import upload
from tests.models import mlp_keras
from tests.serving import server_settings, unique_name
from tt_server import compat, metrics
from tt_server.app import SERVICE_NAMES, Application

GARBAGE = b"\xff\xff\xff"  # a varint that never ends: no message type parses it
BAD_UTF8 = b"\x0a\x04\x0a\x02\xc3\x28"  # PredictRequest.model.name = b"\xc3\x28" (not UTF-8)
EVERY_SERVICE = (
    *SERVICE_NAMES,
    *compat.SERVICE_NAMES,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


def every_method() -> Iterator[MethodDescriptor]:
    pool = descriptor_pool.Default()
    for service in EVERY_SERVICE:
        yield from pool.FindServiceByName(service).methods


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Application]:
    application = Application(server_settings(tmp_path_factory.mktemp("malformed")))
    await application.start()
    yield application
    await application.stop(grace=1.0)


@pytest.fixture(scope="module")
async def channel(server: Application) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
async def mlp(channel: grpc.aio.Channel, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = unique_name("mlp")
    path = mlp_keras(tmp_path_factory.mktemp("mlp"))
    await upload(registry_service_pb2_grpc.ModelRegistryServiceStub(channel), name, path)
    return name


CALL_DEADLINE = 120.0


async def _raw_call(
    channel: grpc.aio.Channel, method: MethodDescriptor, messages: list[bytes], metadata: tuple = ()
) -> tuple[grpc.aio.AioRpcError, list[bytes]]:
    """Send raw messages on ``method``; the error the call ended with and the responses before it. The deadline
    only keeps a hung call from hanging the suite: a Train stream's first answer may wait for the training
    process to start (a new interpreter importing TensorFlow), which took over 10 s on a loaded machine."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    received: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if method.client_streaming and method.server_streaming:
            async for response in channel.stream_stream(path)(iter(messages), metadata=metadata, timeout=CALL_DEADLINE):
                received.append(response)
        elif method.client_streaming:
            await channel.stream_unary(path)(iter(messages), metadata=metadata, timeout=CALL_DEADLINE)
        elif method.server_streaming:
            async for response in channel.unary_stream(path)(messages[0], metadata=metadata, timeout=CALL_DEADLINE):
                received.append(response)
        else:
            await channel.unary_unary(path)(messages[0], metadata=metadata, timeout=CALL_DEADLINE)
    return err.value, received


def _assert_refused(error: grpc.aio.AioRpcError, type_name: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (type_name, error.code(), error.details())
    assert error.details().startswith(f"request is not a valid {type_name}: "), error.details()
    assert dict(error.trailing_metadata() or ()).get("x-request-id"), "no request id"


async def test_the_reported_reproductions(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary("/tensortrigger.v1.InferenceService/Predict")(BAD_UTF8)
    _assert_refused(err.value, "tensortrigger.v1.PredictRequest")
    assert "UTF-8" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in channel.stream_stream("/tensortrigger.v1.InferenceService/PredictBatch")(iter([GARBAGE])):
            pass
    _assert_refused(err.value, "tensortrigger.v1.PredictBatchRequest")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.stream_unary("/tensortrigger.v1.ModelRegistryService/UploadModelVersion")(iter([b"\xff"]))
    _assert_refused(err.value, "tensortrigger.v1.UploadModelVersionRequest")


async def test_every_method_of_every_service(channel: grpc.aio.Channel) -> None:
    methods = list(every_method())
    assert len(methods) > 40  # ours, TF Serving, OIP, health, reflection
    for method in methods:
        error, _ = await _raw_call(channel, method, [GARBAGE])
        _assert_refused(error, method.input_type.full_name)


async def test_mid_stream(channel: grpc.aio.Channel, mlp: str) -> None:
    """A stream whose first message is fine and whose second is not: answers before it, then INVALID_ARGUMENT."""
    pool = descriptor_pool.Default()
    features = tensor_pb2.Tensor(
        dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[1, 4], content=np.ones((1, 4), np.float32).tobytes()
    )
    predict_batch = ipb.PredictBatchRequest(model=model_pb2.ModelRef(name=mlp))
    predict_batch.inputs["features"].CopyFrom(features)
    infer = kpb.ModelInferRequest(model_name=mlp)
    tensor = infer.inputs.add(name="features", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0] * 4)
    train = ipb.TrainRequest(config=ipb.TrainConfig(model=model_pb2.ModelRef(name=mlp), loss="mse"))
    cases = {
        "tensortrigger.v1.InferenceService.PredictBatch": (predict_batch.SerializeToString(), 1),
        "inference.GRPCInferenceService.ModelStreamInfer": (infer.SerializeToString(), 1),
        "tensortrigger.v1.ModelRegistryService.UploadModelVersion": (
            rpb.UploadModelVersionRequest(header=rpb.UploadHeader(model_name=unique_name())).SerializeToString(),
            0,
        ),
        "tensortrigger.v1.InferenceService.Train": (
            train.SerializeToString(),
            1,  # the session's start
        ),
        "tensortrigger.v1.JobsService.CreateJob": (
            jpb.CreateJobRequest(spec=jpb.JobSpec(model=model_pb2.ModelRef(name=mlp))).SerializeToString(),
            0,
        ),
    }
    for full_name, (first, answered) in cases.items():
        service, name = full_name.rsplit(".", 1)
        method = pool.FindServiceByName(service).methods_by_name[name]
        error, received = await _raw_call(channel, method, [first, GARBAGE])
        _assert_refused(error, method.input_type.full_name)
        assert len(received) == answered, full_name
    # The server is still fine.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary("/tensortrigger.v1.InferenceService/Predict")(GARBAGE)
    _assert_refused(err.value, "tensortrigger.v1.PredictRequest")


async def test_counted_and_logged_once_without_traceback(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    counter = metrics.RPCS.labels("/tensortrigger.v1.InferenceService/Predict", "INVALID_ARGUMENT")
    before = counter._value.get()
    caplog.set_level(logging.INFO)
    for _ in range(30):
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary("/tensortrigger.v1.InferenceService/Predict")(GARBAGE)
    assert counter._value.get() - before == 30
    refused = [r for r in caplog.records if r.getMessage() == "refused a request that does not parse"]
    assert len(refused) <= 1  # earlier tests of this module may have used this interval's one line
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_after_authentication(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("reader r-secret-123 alice\n")
    application = Application(server_settings(tmp_path, auth_tokens_file=tokens))
    await application.start()
    try:
        async with grpc.aio.insecure_channel(application.address) as ch:
            predict = ch.unary_unary("/tensortrigger.v1.InferenceService/Predict")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await predict(GARBAGE)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # the stranger learns nothing more
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await predict(GARBAGE, metadata=(("authorization", "Bearer r-secret-123"),))
            _assert_refused(err.value, "tensortrigger.v1.PredictRequest")
    finally:
        await application.stop(grace=1.0)
