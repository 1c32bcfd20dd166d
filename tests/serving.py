"""A real Tensor Trigger server on loopback, on each storage backend, plus clients for it.

``app`` is parametrised: ``embedded`` (SQLite + blob folder) and ``production`` (PostgreSQL + S3 over HTTP to
moto's server). Each test module gets a fresh server, database and bucket.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from tensortrigger.v1 import inference_service_pb2_grpc, jobs_service_pb2_grpc, registry_service_pb2_grpc

from tt_server.app import Application
from tt_server.config import Settings

BACKENDS = ["embedded", "production"]


async def _fresh_database(base_dsn: str) -> str:
    name = f"tt_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(base_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return base_dsn.rsplit("/", 1)[0] + "/" + name


def server_settings(tmp: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "grpc_address": "127.0.0.1:0",
        "data_dir": tmp,
        "log_json": False,
        "gc_interval_seconds": 3600.0,
        "gc_freeze": False,  # tested in tests/runtime/test_manager.py; each settle is a full collection
        "shutdown_grace_seconds": 5.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def backend_overrides(request: pytest.FixtureRequest) -> dict[str, object]:
    """The settings of a fixture parametrised with ``BACKENDS``: a fresh database and bucket for "production"."""
    if request.param != "production":
        return {}
    base_dsn = request.getfixturevalue("postgres_dsn")
    s3_endpoint = request.getfixturevalue("s3_endpoint")
    return {
        "database_url": await _fresh_database(base_dsn),
        "s3_bucket": f"tt-{uuid.uuid4().hex[:12]}",
        "s3_endpoint_url": s3_endpoint,
    }


@pytest.fixture(scope="module", params=BACKENDS)
async def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Application]:
    overrides = await backend_overrides(request)
    application = Application(server_settings(tmp_path_factory.mktemp(f"server-{request.param}"), **overrides))
    await application.start()
    yield application
    await application.stop(grace=1.0)


@pytest.fixture(scope="module")
async def channel(app: Application) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(app.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def registry_stub(channel: grpc.aio.Channel) -> registry_service_pb2_grpc.ModelRegistryServiceStub:
    return registry_service_pb2_grpc.ModelRegistryServiceStub(channel)


@pytest.fixture(scope="module")
def inference_stub(channel: grpc.aio.Channel) -> inference_service_pb2_grpc.InferenceServiceStub:
    return inference_service_pb2_grpc.InferenceServiceStub(channel)


@pytest.fixture(scope="module")
def jobs_stub(channel: grpc.aio.Channel) -> jobs_service_pb2_grpc.JobsServiceStub:
    return jobs_service_pb2_grpc.JobsServiceStub(channel)


def unique_name(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def leftover_threads(before: set[int | None]) -> list[threading.Thread]:
    """Threads started since ``before`` (idents) that would keep the process alive (SQLite's, for one); waits up
    to 5 s for them to end. The test's own event loop's default executor (``asyncio_N``) does not count."""
    leftover: list[threading.Thread] = []
    for _ in range(100):
        leftover = [
            t
            for t in threading.enumerate()
            if t.ident not in before and not t.daemon and t.is_alive() and not t.name.startswith("asyncio_")
        ]
        if not leftover:
            break
        await asyncio.sleep(0.05)
    return leftover
