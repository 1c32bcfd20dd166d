"""Dependency outages: a call that needs PostgreSQL, RabbitMQ or S3 while it is down gets UNAVAILABLE quickly
(never INTERNAL, never a hang), Predict on a loaded model keeps answering, and everything recovers by itself
when the dependency is back: no restart.

Faults touch only this test's server: its own database's backends are terminated, and a loopback proxy
(``tests.ops.proxy``) in front of the shared service is cut or black-holed for its connections alone. Each
test prints what it measured (run with ``-s`` to see it).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
import grpc
import pytest
from tensortrigger.v1 import inference_service_pb2_grpc, jobs_service_pb2_grpc, model_pb2, registry_service_pb2_grpc
from tensortrigger.v1 import registry_service_pb2 as rpb

from tests.api.helpers import upload
from tests.clock import FakeClock
from tests.jobs.helpers import create_job, csv_bytes, features, spec
from tests.ops.helpers import constant_artifacts, outcome, score, until_ok
from tests.ops.proxy import TcpProxy
from tests.services import service_missing
from tests.serving import _fresh_database, server_settings, unique_name
from tt_server.app import Application
from tt_server.storage.amqp_events import AmqpEventBus
from tt_server.types import EventKind, RegistryEvent

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
OK = grpc.StatusCode.OK
AMQP_HOST = os.environ.get("TT_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("TT_TEST_AMQP_PORT", "5672"))
# Short dependency timeouts, so the black-holed phases take seconds; the defaults are 5 s / 30 s.
FAST_TIMEOUTS: dict[str, object] = {
    "database_connect_timeout_seconds": 1.0,
    "database_command_timeout_seconds": 2.0,
    "s3_connect_timeout_seconds": 1.0,
    "s3_read_timeout_seconds": 2.0,
    "s3_max_attempts": 2,
    "amqp_publish_timeout_seconds": 2.0,
    "model_resolution_ttl_seconds": 0.5,  # the tests advance their FakeClock past it during the outages below
    "registry_poll_seconds": 3600.0,
}


class Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.registry = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
        self.inference = inference_service_pb2_grpc.InferenceServiceStub(channel)
        self.jobs = jobs_service_pb2_grpc.JobsServiceStub(channel)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return constant_artifacts(tmp_path_factory.mktemp("outage-models"), 1.0, 2.0, 3.0)


async def _serve(settings_dir: Path, clock: Callable[[], float] = time.monotonic, **overrides: object) -> Application:
    """``clock``: what the model manager's resolution TTL runs on."""
    application = Application(server_settings(settings_dir, **FAST_TIMEOUTS, **overrides), clock=clock)
    await application.start()
    return application


async def _predict_all(stubs: Stubs, name: str, expected: float) -> None:
    """Predict by label, newest and explicit version: every way of naming a loaded model."""
    for ref in (
        model_pb2.ModelRef(name=name, label="prod"),
        model_pb2.ModelRef(name=name),
        model_pb2.ModelRef(name=name, version=1),
    ):
        value, _ = await score(stubs.inference, ref, deadline=2.0)
        assert value == expected, ref


def _report(title: str, **measured: float | int | str) -> None:
    shown = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in measured.items())
    print(f"\n[outage] {title}: {shown}")


def _via(dsn: str, proxy: TcpProxy) -> str:
    parts = urlsplit(dsn)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=user + proxy.host_port))


# --- PostgreSQL -----------------------------------------------------------------------------------------------
async def test_postgres_backends_terminated(postgres_dsn: str, tmp_path: Path, artifacts: list[Path]) -> None:
    """Every backend of the server's database is killed (as by a failover or an admin): the pool reconnects;
    the call that finds a dead connection may get UNAVAILABLE, the next one succeeds."""
    database_url = await _fresh_database(postgres_dsn)
    database = urlsplit(database_url).path[1:]
    app = await _serve(tmp_path, database_url=database_url)
    admin = await asyncpg.connect(postgres_dsn)
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            stubs = Stubs(channel)
            name = unique_name("pgkill")
            await upload(stubs.registry, name, artifacts[0], labels=["prod"])
            await _predict_all(stubs, name, 1.0)
            for round_ in range(3):
                killed = await admin.fetchval(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1) AS t",
                    database,
                )
                assert killed >= 1
                started = time.monotonic()
                codes: list[grpc.StatusCode] = []
                while not codes or codes[-1] != OK:
                    code, details, _ = await outcome(stubs.registry.ListModels(rpb.ListModelsRequest(), timeout=5))
                    assert code in (OK, UNAVAILABLE), f"{code}: {details}"
                    codes.append(code)
                    assert len(codes) <= 2, codes  # the pool drops all its connections at the first lost one
                recovered = time.monotonic() - started
                await _predict_all(stubs, name, 1.0)
                (await stubs.registry.GetModel(rpb.GetModelRequest(name=name), timeout=5))
                _report(
                    f"pg_terminate_backend round {round_ + 1}",
                    backends_killed=killed,
                    unavailable_before_ok=codes.count(UNAVAILABLE),
                    recovered_s=recovered,
                )
    finally:
        await admin.close()
        await app.stop(grace=1.0)


async def test_postgres_unreachable_then_back(postgres_dsn: str, tmp_path: Path, artifacts: list[Path]) -> None:
    """PostgreSQL down (connections refused), then partitioned (nothing answers), then back."""
    target = urlsplit(postgres_dsn)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    clock = FakeClock()
    app = await _serve(tmp_path, clock, database_url=_via(await _fresh_database(postgres_dsn), proxy))
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            stubs = Stubs(channel)
            name = unique_name("pgdown")
            await upload(stubs.registry, name, artifacts[0], labels=["prod"])
            await _predict_all(stubs, name, 1.0)

            # Down: refused at once.
            await proxy.cut()
            for call in (
                stubs.registry.ListModels(rpb.ListModelsRequest()),
                stubs.registry.GetModel(rpb.GetModelRequest(name=name)),
                stubs.registry.ListModelVersions(rpb.ListModelVersionsRequest(name=name)),
            ):
                code, details, took = await outcome(call)
                assert code == UNAVAILABLE, f"{code}: {details}"
                assert "metadata database" in details
                assert took < 1.0
            down_latency = took
            code, details, upload_took = await outcome(upload(stubs.registry, name, artifacts[1]))
            assert code == UNAVAILABLE, f"{code}: {details}"
            clock.advance(0.6)  # past the resolution TTL: label and newest now come from the stale cache
            predicts = 0
            started = time.monotonic()
            while time.monotonic() - started < 1.5:
                await _predict_all(stubs, name, 1.0)
                predicts += 3
                clock.advance(0.25)  # the stale answers expire too: their background refreshes find the store down

            # Partitioned: connections hang; the connect timeout (1 s here) turns that into UNAVAILABLE.
            await proxy.blackhole()
            code, details, partition_latency = await outcome(stubs.registry.ListModels(rpb.ListModelsRequest()))
            assert code == UNAVAILABLE, f"{code}: {details}"
            assert partition_latency < 3.0
            # A client deadline shorter than that ends the call on time.
            code, _, deadline_took = await outcome(stubs.registry.ListModels(rpb.ListModelsRequest(), timeout=0.3))
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert deadline_took < 1.0
            clock.advance(0.6)
            started = time.monotonic()
            await _predict_all(stubs, name, 1.0)  # stale resolutions answer at once, not after a connect timeout
            partition_predict = time.monotonic() - started
            assert partition_predict < 0.5

            # Back: the pool reconnects by itself.
            await proxy.restore()
            recovered = await until_ok(lambda: stubs.registry.ListModels(rpb.ListModelsRequest()), within=10)
            version = (await upload(stubs.registry, name, artifacts[1])).version.version
            assert version == 2
            await stubs.registry.SetLabel(rpb.SetLabelRequest(name=name, label="prod", version=2))
            value, served = await score(stubs.inference, model_pb2.ModelRef(name=name, label="prod"))
            assert (value, served) == (2.0, 2)
            _report(
                "postgres unreachable",
                refused_to_unavailable_s=down_latency,
                upload_unavailable_s=upload_took,
                predicts_ok_while_down=predicts,
                partitioned_to_unavailable_s=partition_latency,
                predict_while_partitioned_s=partition_predict,
                recovered_after_restore_s=recovered,
            )
    finally:
        await proxy.restore()  # stop() must reach the database
        await app.stop(grace=1.0)
        await proxy.close()


# --- RabbitMQ -------------------------------------------------------------------------------------------------
async def test_rabbitmq_unreachable_then_back(tmp_path: Path, artifacts: list[Path]) -> None:
    """RabbitMQ away: CreateJob UNAVAILABLE once the publish timeout (2 s here) is spent, the registry and
    Predict unaffected; back: jobs are accepted again and registry events flow both ways, no restart."""
    try:
        await (await aio_pika.connect(f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/", timeout=5)).close()
    except (OSError, aio_pika.exceptions.AMQPError) as e:
        service_missing(f"RabbitMQ is not reachable at {AMQP_HOST}:{AMQP_PORT} ({e}); start: rabbitmq-server -detached")
    direct = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/"
    queue = f"tt.jobs.ops-{uuid.uuid4().hex[:8]}"
    proxy = await TcpProxy(AMQP_HOST, AMQP_PORT).start()
    app = await _serve(tmp_path, amqp_url=f"amqp://guest:guest@{proxy.host_port}/", amqp_jobs_queue=queue)
    other = AmqpEventBus(direct)  # another replica, which stays connected throughout
    heard_by_other: list[RegistryEvent] = []
    heard_by_app: list[RegistryEvent] = []

    async def hear_other(event: RegistryEvent) -> None:
        heard_by_other.append(event)

    async def hear_app(event: RegistryEvent) -> None:
        heard_by_app.append(event)

    other.subscribe(hear_other)
    app.events.subscribe(hear_app)
    await other.open()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            stubs = Stubs(channel)
            name = unique_name("mqdown")
            await upload(stubs.registry, name, artifacts[0], labels=["prod"])
            data = csv_bytes(features(20))
            await create_job(stubs.jobs, spec(name), data)

            await proxy.cut()
            code, details, job_latency = await outcome(create_job(stubs.jobs, spec(name), data))
            assert code == UNAVAILABLE, f"{code}: {details}"
            assert "job queue" in details
            assert job_latency < 4.0
            # Registry changes do not wait for RabbitMQ (their events are hints; replicas also poll).
            code, details, set_label_took = await outcome(
                stubs.registry.SetLabel(rpb.SetLabelRequest(name=name, label="canary", version=1))
            )
            assert code == OK, details
            assert set_label_took < 1.0
            await _predict_all(stubs, name, 1.0)

            await proxy.restore()
            recovered = await until_ok(lambda: create_job(stubs.jobs, spec(name), data), within=15, pause=0.2)

            # Events flow again in both directions over the re-established connection.
            heard_by_other.clear()
            started = time.monotonic()
            await stubs.registry.SetLabel(rpb.SetLabelRequest(name=name, label="prod", version=1))
            while not any(e.model_name == name and e.label == "prod" for e in heard_by_other):
                assert time.monotonic() - started < 10, "the other replica heard nothing"
                await asyncio.sleep(0.05)
            started = time.monotonic()
            marker = unique_name("marker")
            await other.publish(RegistryEvent(EventKind.MODEL_DELETED, marker))
            while not any(e.model_name == marker for e in heard_by_app):
                assert time.monotonic() - started < 10, "the server heard nothing from the other replica"
                await asyncio.sleep(0.05)
            _report(
                "rabbitmq unreachable",
                create_job_unavailable_s=job_latency,
                set_label_while_down_s=set_label_took,
                create_job_ok_after_restore_s=recovered,
            )
    finally:
        await proxy.restore()
        await other.close()
        await app.stop(grace=1.0)
        await proxy.close()
        connection = await aio_pika.connect(direct)
        async with connection:
            channel = await connection.channel()
            for name in (queue, f"{queue}.dead"):
                await channel.queue_delete(name)
            await channel.exchange_delete(f"{queue}.dlx")


# --- S3 -------------------------------------------------------------------------------------------------------
@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


class MotoS3:
    """A dedicated moto S3 server that can be stopped and started again on the same port. Its data lives in
    moto's process-wide backend, so it survives the restart, as a real S3's would."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._make = lambda port: ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server = self._make(0)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]

    def stop(self) -> None:
        self._server.stop()
        # stop() leaves the listening socket open (connections would queue unanswered); close it to free the port.
        self._server._server.server_close()  # type: ignore[union-attr]

    def start(self) -> None:
        self._server = self._make(self.port)
        self._server.start()


async def test_s3_down_then_back(aws_env: None, postgres_dsn: str, tmp_path: Path, artifacts: list[Path]) -> None:
    """S3 stopped: uploads UNAVAILABLE, Predict on the loaded model and metadata calls unaffected, and Predict
    still answers when PostgreSQL goes down too; partitioned: UNAVAILABLE after the read timeouts; restarted:
    uploads work again and the old artifacts are still there.

    The server reaches moto through the proxy, because moto's request threads keep serving connections they
    already have after a stop: cutting the proxy ends those too, as a real outage would."""
    moto = await asyncio.to_thread(MotoS3)
    proxy = await TcpProxy("127.0.0.1", moto.port).start()
    target = urlsplit(postgres_dsn)
    pg_proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    clock = FakeClock()
    app = await _serve(
        tmp_path,
        clock,
        s3_bucket=f"tt-ops-{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=f"http://{proxy.host_port}",
        database_url=_via(await _fresh_database(postgres_dsn), pg_proxy),
    )
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            stubs = Stubs(channel)
            name = unique_name("s3down")
            await upload(stubs.registry, name, artifacts[0], labels=["prod"])
            await _predict_all(stubs, name, 1.0)

            await asyncio.to_thread(moto.stop)
            await proxy.cut()
            code, details, upload_latency = await outcome(upload(stubs.registry, name, artifacts[1]))
            assert code == UNAVAILABLE, f"{code}: {details}"
            assert "blob store" in details
            assert upload_latency < 10.0  # two requests (write, clean-up), each retried once after a backoff
            clock.advance(0.6)  # past the resolution TTL
            await _predict_all(stubs, name, 1.0)
            await stubs.registry.ListModels(rpb.ListModelsRequest())  # metadata lives elsewhere
            # Both stores down: a loaded model still answers, however it is named.
            await pg_proxy.cut()
            clock.advance(0.6)  # past the resolution TTL
            await _predict_all(stubs, name, 1.0)
            code, details, _ = await outcome(stubs.registry.ListModels(rpb.ListModelsRequest()))
            assert code == UNAVAILABLE, f"{code}: {details}"
            await pg_proxy.restore()
            download = stubs.registry.DownloadModelVersion(
                rpb.DownloadModelVersionRequest(model=model_pb2.ModelRef(name=name, version=1))
            )
            code, details, _ = await outcome(_drain(download))
            assert code == UNAVAILABLE, f"{code}: {details}"

            # Partitioned: connections are accepted but never answered; the read timeout (2 s, 2 attempts) ends
            # each request. An upload makes two (the write, then the failed write's clean-up), ~6 s each.
            await proxy.blackhole()
            code, details, partition_latency = await outcome(upload(stubs.registry, name, artifacts[1]))
            assert code == UNAVAILABLE, f"{code}: {details}"
            assert partition_latency < 20.0
            await _predict_all(stubs, name, 1.0)

            await asyncio.to_thread(moto.start)
            await proxy.restore()
            recovered = await until_ok(lambda: upload(stubs.registry, name, artifacts[1]), within=15)
            download = stubs.registry.DownloadModelVersion(
                rpb.DownloadModelVersionRequest(model=model_pb2.ModelRef(name=name, version=1))
            )
            assert await _drain(download) == artifacts[0].read_bytes()
            _report(
                "s3 down",
                upload_unavailable_s=upload_latency,
                partitioned_upload_unavailable_s=partition_latency,
                upload_ok_after_restart_s=recovered,
            )
    finally:
        await proxy.restore()
        await pg_proxy.restore()
        await app.stop(grace=1.0)
        await proxy.close()
        await pg_proxy.close()
        await asyncio.to_thread(moto.stop)


async def _drain(call: grpc.aio.UnaryStreamCall) -> bytes:
    return b"".join([message.chunk async for message in call])
