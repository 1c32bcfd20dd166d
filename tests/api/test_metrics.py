"""Prometheus metrics are exposed over HTTP and move with traffic."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import urllib.request

import grpc
import numpy as np
from tensortrigger.v1 import (
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_pb2,
    registry_service_pb2_grpc,
    tensor_pb2,
)

from tests import models
from tests.api.helpers import upload
from tests.serving import server_settings
from tt_server.app import Application


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    return await asyncio.to_thread(get)


def _value(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


async def test_metrics_exposed_and_moving(tmp_path) -> None:
    port = _free_port()
    application = Application(server_settings(tmp_path, metrics_address=f"127.0.0.1:{port}"))
    await application.start()
    try:
        async with grpc.aio.insecure_channel(application.address) as ch:
            registry = registry_service_pb2_grpc.ModelRegistryServiceStub(ch)
            inference = inference_service_pb2_grpc.InferenceServiceStub(ch)
            await upload(registry, "metered", models.mlp_keras(tmp_path))
            before = await _scrape(port)
            x = np.ones((2, 4), np.float32)
            request = inference_service_pb2.PredictRequest(
                model=model_pb2.ModelRef(name="metered"),
                inputs={
                    "features": tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[2, 4], content=x.tobytes())
                },
            )
            await asyncio.gather(*(inference.Predict(request) for _ in range(20)))
            bad = inference_service_pb2.PredictRequest(model=model_pb2.ModelRef(name="no-such-model"))
            with contextlib.suppress(grpc.aio.AioRpcError):
                await inference.Predict(bad)
        after = await _scrape(port)
    finally:
        await application.stop(grace=1.0)
    ok = 'tt_rpcs_total{code="OK",method="/tensortrigger.v1.InferenceService/Predict"}'
    missing = 'tt_rpcs_total{code="NOT_FOUND",method="/tensortrigger.v1.InferenceService/Predict"}'
    assert _value(after, ok) - _value(before, ok) == 20
    assert _value(after, missing) - _value(before, missing) == 1
    assert _value(after, 'tt_batch_rows_sum{servable="metered:1"}') >= 40
    assert _value(after, 'tt_model_loads_total{model="metered",outcome="loaded"}') >= 1
    assert "tt_rpc_duration_seconds_bucket" in after
