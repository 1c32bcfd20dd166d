"""Two replicas on the same PostgreSQL, S3 and RabbitMQ: registry changes on one reach the other at once
through the AMQP event fanout, and the polling fallback catches what an event missed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensortrigger.v1 import inference_service_pb2 as ipb
from tensortrigger.v1 import (
    inference_service_pb2_grpc,
    model_pb2,
    registry_service_pb2,
    registry_service_pb2_grpc,
    tensor_pb2,
)

from tests.api.helpers import upload
from tests.runtime.helpers import constant_model
from tests.serving import _fresh_database, server_settings
from tt_server.app import Application

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture
async def replicas(tmp_path: Path, postgres_dsn: str, s3_endpoint: str) -> AsyncIterator[list[Application]]:
    shared = {
        "database_url": await _fresh_database(postgres_dsn),
        "s3_bucket": f"tt-{uuid.uuid4().hex[:12]}",
        "s3_endpoint_url": s3_endpoint,
        "amqp_url": AMQP_URL,
        "amqp_jobs_queue": f"tt.jobs.test-{uuid.uuid4().hex[:8]}",
        # Long enough that only an event (not the resolution TTL or polling) can explain a quick switch.
        "model_resolution_ttl_seconds": 600.0,
        "registry_poll_seconds": 3600.0,
    }
    apps = [Application(server_settings(tmp_path / f"replica-{i}", **shared)) for i in range(2)]
    for application in apps:
        await application.start()
    yield apps
    for application in apps:
        await application.stop(grace=1.0)


async def _score(stub: inference_service_pb2_grpc.InferenceServiceStub, ref: model_pb2.ModelRef) -> float:
    x = np.ones((1, 4), np.float32)
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[1, 4], content=x.tobytes())
    response = await stub.Predict(ipb.PredictRequest(model=ref, inputs={"features": tensor}))
    return float(np.frombuffer(response.outputs["score"].content, "<f4")[0])


async def _eventually(check, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            if await check():
                return
        except grpc.aio.AioRpcError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the other replica did not catch up in time")
        await asyncio.sleep(0.05)


async def test_label_moves_and_deletes_reach_the_other_replica(replicas: list[Application], tmp_path: Path) -> None:
    a, b = replicas
    paths = []
    for value in (1.0, 2.0):
        path = tmp_path / f"c{value}.keras"
        constant_model(value).save(path)
        paths.append(path)
    async with grpc.aio.insecure_channel(a.address) as ch_a, grpc.aio.insecure_channel(b.address) as ch_b:
        reg_a = registry_service_pb2_grpc.ModelRegistryServiceStub(ch_a)
        inf_b = inference_service_pb2_grpc.InferenceServiceStub(ch_b)
        await upload(reg_a, "shared", paths[0], labels=["stable"])
        await upload(reg_a, "shared", paths[1])
        stable = model_pb2.ModelRef(name="shared", label="stable")
        assert await _score(inf_b, stable) == 1.0  # B resolves and caches stable -> 1

        await reg_a.SetLabel(registry_service_pb2.SetLabelRequest(name="shared", label="stable", version=2))

        async def switched() -> bool:
            return await _score(inf_b, stable) == 2.0

        await _eventually(switched)

        v1 = model_pb2.ModelRef(name="shared", version=1)
        assert await _score(inf_b, v1) == 1.0  # loaded on B
        await reg_a.DeleteModelVersion(registry_service_pb2.DeleteModelVersionRequest(name="shared", version=1))

        async def gone() -> bool:
            try:
                await _score(inf_b, v1)
            except grpc.aio.AioRpcError as e:
                return e.code() == grpc.StatusCode.NOT_FOUND
            return False

        await _eventually(gone)


async def test_polling_unloads_versions_deleted_without_an_event(replicas: list[Application], tmp_path: Path) -> None:
    a, b = replicas
    path = tmp_path / "c.keras"
    constant_model(3.0).save(path)
    async with grpc.aio.insecure_channel(b.address) as ch_b:
        reg_b = registry_service_pb2_grpc.ModelRegistryServiceStub(ch_b)
        inf_b = inference_service_pb2_grpc.InferenceServiceStub(ch_b)
        await upload(reg_b, "polled", path)
        ref = model_pb2.ModelRef(name="polled", version=1)
        assert await _score(inf_b, ref) == 3.0
        # Delete behind every replica's back (as if the event were lost), then let B's poll run once.
        await a.metadata.delete_version("polled", 1, force=True)
        assert await b.models.check_loaded() == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _score(inf_b, ref)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_serving_policy_changes_and_promotions_reach_the_other_replica(
    replicas: list[Application], tmp_path: Path
) -> None:
    a, b = replicas
    paths = []
    for value in (1.0, 2.0):
        path = tmp_path / f"p{value}.keras"
        constant_model(value).save(path)
        paths.append(path)
    async with grpc.aio.insecure_channel(a.address) as ch_a, grpc.aio.insecure_channel(b.address) as ch_b:
        reg_a = registry_service_pb2_grpc.ModelRegistryServiceStub(ch_a)
        inf_b = inference_service_pb2_grpc.InferenceServiceStub(ch_b)
        name = f"policy-{uuid.uuid4().hex[:8]}"
        await upload(reg_a, name, paths[0])
        await upload(reg_a, name, paths[1])
        unpinned = model_pb2.ModelRef(name=name)
        assert await _score(inf_b, unpinned) == 2.0  # resolved and cached on b (TTL 600 s)

        policy = model_pb2.ServingPolicy(version=1)
        await reg_a.SetServingPolicy(registry_service_pb2.SetServingPolicyRequest(name=name, policy=policy))

        async def serves(value: float) -> bool:
            return await _score(inf_b, unpinned) == value

        await _eventually(lambda: serves(1.0))
        await reg_a.SetServingPolicy(registry_service_pb2.SetServingPolicyRequest(name=name))
        await _eventually(lambda: serves(2.0))
