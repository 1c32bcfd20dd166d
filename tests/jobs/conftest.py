"""Fixtures for the job tests: RabbitMQ, model artifacts, and servers in both modes.

``amqp_url``: a RabbitMQ virtual host of this session's own (made with ``rabbitmqctl``), so that tests can
close every connection in it (``close_all_amqp_connections``) without touching anyone else's, and its
queues vanish at the end. Without ``rabbitmqctl`` the default vhost is used (queue names are unique per test
anyway) and the connection-drop test fails on CI / is skipped elsewhere.

``job_app``: a real server per module, ``embedded`` (SQLite, blob folder, in-process queue and worker) and
``production`` (PostgreSQL, S3 on moto, RabbitMQ) with a worker in the test process consuming over AMQP, as
a tt-worker process would. Settings are shrunk (small batches and parse blocks, short leases) so that small
files still take several batches and faults are noticed quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from tensortrigger.v1 import jobs_service_pb2_grpc, registry_service_pb2_grpc

from tests import models
from tests.jobs.helpers import JobEvents, observe_jobs, slow_mlp, upload_model
from tests.services import service_missing
from tests.serving import _fresh_database, server_settings, unique_name
from tt_server.app import Application
from tt_server.config import Settings
from tt_server.events import LocalEventBus
from tt_server.jobs.objects import JobBlobs
from tt_server.jobs.runner import JobRunner
from tt_server.jobs.worker import JobWorker
from tt_server.runtime.loader import loader_factory
from tt_server.runtime.manager import ModelManager
from tt_server.storage.factory import make_object_buckets, open_stores
from tt_server.storage.s3 import S3BlobStore

AMQP_HOST = os.environ.get("TT_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("TT_TEST_AMQP_PORT", "5672"))
AMQP_START = "rabbitmq-server -detached (apt-get install -y rabbitmq-server)"


@pytest.fixture
def job_events() -> Iterator[JobEvents]:
    """Attempts started and deliveries settled by the workers in this process during the test."""
    with observe_jobs() as events:
        yield events


# Shrunk so that a few thousand rows make several batches, and a killed worker's lease runs out quickly.
FAST_JOB_SETTINGS: dict[str, object] = {
    "job_batch_rows": 500,
    "job_parse_block_bytes": 16 * 1024,
    "job_lease_seconds": 2.0,
    "job_progress_interval_seconds": 0.1,
    "job_retry_delay_seconds": 0.1,
    "job_watch_poll_seconds": 0.1,
    "job_max_attempts": 3,
}


def rabbitmqctl(*args: str) -> str:
    binary = shutil.which("rabbitmqctl")
    assert binary is not None
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr or done.stdout
    return done.stdout


@pytest.fixture(scope="session")
def amqp_vhost() -> Iterator[str | None]:
    """The session's own virtual host, or None when rabbitmqctl is not available."""
    import socket

    try:
        socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=5).close()
    except OSError as e:
        service_missing(f"RabbitMQ is not reachable at {AMQP_HOST}:{AMQP_PORT} ({e}). Start it with: {AMQP_START}")
    if shutil.which("rabbitmqctl") is None or AMQP_HOST not in ("127.0.0.1", "localhost"):
        yield None
        return
    vhost = f"tt-test-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield vhost
    rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def amqp_url(amqp_vhost: str | None) -> str:
    return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{amqp_vhost or ''}"


@pytest.fixture(scope="session")
def close_all_amqp_connections(amqp_vhost: str | None) -> Callable[[], None]:
    """Make RabbitMQ drop every client connection of this session (as a network failure would)."""

    def close() -> None:
        if amqp_vhost is None:
            service_missing("rabbitmqctl is needed to drop RabbitMQ connections (apt-get install -y rabbitmq-server)")
        rabbitmqctl("close_all_connections", "--vhost", amqp_vhost, "test: connection dropped")

    return close


@pytest.fixture(scope="session")
def job_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``mlp``: features (-1, 4) -> score (-1, 1); ``slow``: the same signature with wide hidden layers, so
    that a few thousand rows take seconds (to observe progress, cancel and kill mid-job)."""
    out = tmp_path_factory.mktemp("job-artifacts")
    return {"mlp": models.mlp_keras(out), "slow": slow_mlp(out)}


@dataclass
class JobServer:
    """A server and what tests reach into: its settings, and its in-process AMQP worker (production)."""

    app: Application
    mode: str
    worker: JobWorker | None = None

    @property
    def settings(self) -> Settings:
        return self.app.settings


async def production_overrides(request: pytest.FixtureRequest, **extra: object) -> dict[str, object]:
    """Settings for a production-mode server: a fresh database and bucket, and a queue of its own."""
    return {
        "database_url": await _fresh_database(request.getfixturevalue("postgres_dsn")),
        "s3_bucket": f"tt-{uuid.uuid4().hex[:12]}",
        "s3_endpoint_url": request.getfixturevalue("s3_endpoint"),
        "amqp_url": request.getfixturevalue("amqp_url"),
        "amqp_jobs_queue": f"tt.jobs.{uuid.uuid4().hex[:8]}",
        **extra,
    }


class InProcessWorker:
    """What ``tt-worker`` runs, in the test process: own stores, broker connection and model manager."""

    def __init__(self, settings: Settings, name: str = "test-worker") -> None:
        self.settings = settings
        self.name = name
        self.worker: JobWorker | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> JobWorker:
        s = self.settings
        self._opened = contextlib.AsyncExitStack()
        # The stores as tt-worker opens them (the processes' one root), without registry events.
        stores = await self._opened.enter_async_context(open_stores(s, broker_name=self.name, events=LocalEventBus()))
        self.metadata, self.blobs, self.broker = stores.metadata, stores.blobs, stores.broker
        self.job_blobs = JobBlobs(self.blobs, make_object_buckets(s))
        await self.job_blobs.open()
        self.models = ModelManager(
            self.metadata, self.blobs, s.data_dir / f"cache-{uuid.uuid4().hex[:6]}", s, loader_factory=loader_factory(s)
        )
        self.runner = JobRunner(
            stores.jobs, self.job_blobs, self.models, s, owner=f"{self.name}:{uuid.uuid4().hex[:6]}"
        )
        self.worker = JobWorker(self.runner, self.broker, stores.jobs, s, concurrency=1)
        self._task = asyncio.create_task(self.worker.run())
        return self.worker

    async def stop(self) -> None:
        if self.worker is not None and self._task is not None:
            await self.worker.stop(grace=5.0)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.models.close()
        self.runner.close()
        await self.job_blobs.close()
        await self._opened.aclose()  # broker, event bus, blobs, database


@pytest.fixture(scope="module", params=["embedded", "production"])
async def job_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[JobServer]:
    overrides: dict[str, object] = dict(FAST_JOB_SETTINGS)
    if request.param == "production":
        overrides.update(await production_overrides(request))
    settings = server_settings(tmp_path_factory.mktemp(f"jobs-{request.param}"), **overrides)
    app = Application(settings)
    await app.start()
    worker = None
    if request.param == "production":
        worker = InProcessWorker(settings)
        server = JobServer(app, request.param, await worker.start())
    else:
        assert app.embedded_worker is not None
        server = JobServer(app, request.param, app.embedded_worker.worker)
    yield server
    if worker is not None:
        await worker.stop()
    await app.stop(grace=1.0)


@pytest.fixture(scope="module")
async def job_channel(job_server: JobServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(job_server.app.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def jobs(job_channel: grpc.aio.Channel) -> jobs_service_pb2_grpc.JobsServiceStub:
    return jobs_service_pb2_grpc.JobsServiceStub(job_channel)


@pytest.fixture(scope="module")
def registry(job_channel: grpc.aio.Channel) -> registry_service_pb2_grpc.ModelRegistryServiceStub:
    return registry_service_pb2_grpc.ModelRegistryServiceStub(job_channel)


# The job server's MLP and slow models (job_artifacts), uploaded once per module that asks for them.
@pytest.fixture(scope="module")
async def mlp(registry, job_artifacts: dict[str, Path]) -> str:
    name = unique_name("mlp")
    await upload_model(registry, name, job_artifacts["mlp"])
    return name


@pytest.fixture(scope="module")
async def slow(registry, job_artifacts: dict[str, Path]) -> str:
    name = unique_name("slow")
    await upload_model(registry, name, job_artifacts["slow"])
    return name


@pytest.fixture(scope="module")
async def caller_bucket(request: pytest.FixtureRequest) -> str:
    """A bucket of a job caller's own (on moto), under whose ``out/`` the bare server's jobs may write results."""
    name = f"caller-{uuid.uuid4().hex[:10]}"
    store = S3BlobStore(name, request.getfixturevalue("s3_endpoint"), "us-east-1")
    await store.open()  # creates the bucket
    await store.close()
    return name


@pytest.fixture(scope="module")
async def bare_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, caller_bucket: str
) -> AsyncIterator[Application]:
    """A production-mode server without any worker: each test brings its own (in-process or processes)."""
    overrides = await production_overrides(request, job_s3_allowed_prefixes=[f"s3://{caller_bucket}/out/"])
    settings = server_settings(tmp_path_factory.mktemp("bare"), **FAST_JOB_SETTINGS, **overrides)
    app = Application(settings)
    await app.start()
    yield app
    await app.stop(grace=1.0)


@pytest.fixture(scope="module")
async def bare_channel(bare_server: Application) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(bare_server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def bare_jobs(bare_channel: grpc.aio.Channel) -> jobs_service_pb2_grpc.JobsServiceStub:
    return jobs_service_pb2_grpc.JobsServiceStub(bare_channel)


@pytest.fixture(scope="module")
async def bare_models(bare_channel: grpc.aio.Channel, job_artifacts: dict[str, Path]) -> tuple[str, str]:
    """Names of the fast and the slow model, uploaded to ``bare_server``."""
    registry = registry_service_pb2_grpc.ModelRegistryServiceStub(bare_channel)
    names = unique_name("mlp"), unique_name("slow")
    await upload_model(registry, names[0], job_artifacts["mlp"])
    await upload_model(registry, names[1], job_artifacts["slow"])
    return names
