"""Predict on a version whose stored artifact is corrupt or missing, on a real server and each storage backend: the
artifact is downloaded and loaded once per backoff, not once per call; calls in between fail at once with the
load's status and message; once the cause is fixed (the artifact restored, a new version uploaded) it is served.

The server's model manager runs on a ``FakeClock`` the tests advance past each backoff."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import inference_service_pb2_grpc, model_pb2, registry_service_pb2_grpc, tensor_pb2

from tests.api.helpers import upload
from tests.clock import FakeClock
from tests.ops.helpers import constant_artifacts
from tests.serving import BACKENDS, backend_overrides, server_settings, unique_name
from tt_server.app import Application

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


class Server:
    def __init__(self, app: Application, clock: FakeClock, channel: grpc.aio.Channel) -> None:
        self.app = app
        self.clock = clock
        self.registry = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
        self.inference = inference_service_pb2_grpc.InferenceServiceStub(channel)

    async def predict(self, ref: model_pb2.ModelRef) -> tuple[grpc.StatusCode, str, float]:
        """The call's status, details and (when OK) the answer of the constant model that served it."""
        x = tensor_pb2.Tensor(
            dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[1, 4], content=np.ones((1, 4), np.float32).tobytes()
        )
        try:
            response = await self.inference.Predict(pb.PredictRequest(model=ref, inputs={"features": x}), timeout=60)
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details() or "", 0.0
        return grpc.StatusCode.OK, "", float(np.frombuffer(response.outputs["score"].content, "<f4")[0])


@pytest.fixture(scope="module", params=BACKENDS)
async def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    overrides = await backend_overrides(request)
    clock = FakeClock()
    app = Application(server_settings(tmp_path_factory.mktemp(f"backoff-{request.param}"), **overrides), clock=clock)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            yield Server(app, clock, channel)
    finally:
        await app.stop(grace=1.0)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return constant_artifacts(tmp_path_factory.mktemp("backoff-models"), 1.0, 2.0)


def load_failures(name: str, version: int) -> float:
    return REGISTRY.get_sample_value("tt_model_load_failures_total", {"model": name, "version": str(version)}) or 0.0


async def test_a_corrupt_artifact_is_loaded_once_per_backoff_and_served_once_restored(
    server: Server, artifacts: list[Path], tmp_path: Path
) -> None:
    name = unique_name("corrupt")
    await upload(server.registry, name, artifacts[0])
    stored = await server.app.metadata.get_version(name, 1)
    good, garbage = tmp_path / "good", tmp_path / "garbage"
    await server.app.blobs.get_file(stored.blob_key, good)
    garbage.write_bytes(uuid.uuid4().bytes * 100)
    await server.app.blobs.put_file(stored.blob_key, garbage)  # the stored artifact is corrupt
    ref = model_pb2.ModelRef(name=name, version=1)
    loads = server.app.models.loads_started

    code, error, _ = await server.predict(ref)
    assert code == FAILED_PRECONDITION and error.endswith("does not match its recorded sha256"), error
    assert await server.predict(ref) == (FAILED_PRECONDITION, f"{error}; next load attempt in 1 s", 0.0)
    assert server.app.models.loads_started - loads == 1  # two calls, one download and load
    assert load_failures(name, 1) == 1

    server.clock.advance(1)  # the backoff has passed: the next call loads again, and fails again
    assert await server.predict(ref) == (FAILED_PRECONDITION, error, 0.0)
    assert await server.predict(ref) == (FAILED_PRECONDITION, f"{error}; next load attempt in 2 s", 0.0)
    assert server.app.models.loads_started - loads == 2
    assert load_failures(name, 1) == 2

    await server.app.blobs.put_file(stored.blob_key, good)  # restored (from a backup, say)
    assert await server.predict(ref) == (FAILED_PRECONDITION, f"{error}; next load attempt in 2 s", 0.0)
    server.clock.advance(2)
    assert await server.predict(ref) == (grpc.StatusCode.OK, "", 1.0)
    assert server.app.models.loads_started - loads == 3
    assert load_failures(name, 1) == 2


async def test_a_missing_artifact_ends_its_backoff_when_a_new_version_is_uploaded(
    server: Server, artifacts: list[Path]
) -> None:
    name = unique_name("missing")
    await upload(server.registry, name, artifacts[0])
    await server.app.blobs.delete((await server.app.metadata.get_version(name, 1)).blob_key)
    newest, first = model_pb2.ModelRef(name=name), model_pb2.ModelRef(name=name, version=1)
    loads = server.app.models.loads_started

    code, error, _ = await server.predict(newest)
    assert code == FAILED_PRECONDITION and error.endswith("its artifact is missing"), error
    assert await server.predict(newest) == (FAILED_PRECONDITION, f"{error}; next load attempt in 1 s", 0.0)
    assert await server.predict(first) == (FAILED_PRECONDITION, f"{error}; next load attempt in 1 s", 0.0)
    assert server.app.models.loads_started - loads == 1

    await upload(server.registry, name, artifacts[1])  # the fix: version 2; its event ends version 1's backoff
    assert await server.predict(newest) == (grpc.StatusCode.OK, "", 2.0)
    assert await server.predict(first) == (FAILED_PRECONDITION, error, 0.0)  # loaded again at once
    assert load_failures(name, 1) == 2
