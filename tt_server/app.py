"""The server's composition root: settings -> stores -> domain -> gRPC (and HTTP) server.

The stores come from ``storage.factory.open_stores``, the root the job worker (``tt_worker/main.py``) shares;
what this adds (the domain services, transports and background tasks) is wired here and nowhere else.

``Application.start()`` returns once the server is listening (tests use it directly); ``wait()`` blocks until
it stops; ``stop()`` drains: health goes NOT_SERVING at once, new calls are still taken for the drain delay,
in-flight calls get the grace period, then the stores close. Everything start-up opens goes on one
``AsyncExitStack``, so a start-up that fails halfway closes exactly what it had opened, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tensortrigger.v1 import (
    inference_service_pb2,
    inference_service_pb2_grpc,
    jobs_service_pb2,
    jobs_service_pb2_grpc,
    registry_service_pb2,
    registry_service_pb2_grpc,
)

from tt_server import compat, metrics
from tt_server.api.auth import RateLimiter, TokenAuthenticator
from tt_server.api.inference import InferenceServicer
from tt_server.api.jobs import JobsServicer
from tt_server.api.middleware import AccessLog, Middleware
from tt_server.api.reflection import V1_SERVICE_NAME as REFLECTION_V1
from tt_server.api.reflection import DocumentedReflectionServicer, add_reflection_to_server, documented_files
from tt_server.api.registry import RegistryServicer
from tt_server.cli import stores_in_use
from tt_server.config import Settings
from tt_server.events import EventBus
from tt_server.jobs.objects import JobBlobs
from tt_server.jobs.runner import JobRunner
from tt_server.jobs.service import JobsService
from tt_server.jobs.worker import EmbeddedWorker
from tt_server.registry.repository import ModelRepository
from tt_server.registry.service import Registry
from tt_server.registry.sweeper import Sweeper
from tt_server.rest import HttpServer, build_http_server
from tt_server.runtime.loader import loader_factory
from tt_server.runtime.manager import ModelManager
from tt_server.runtime.service import InferenceService
from tt_server.storage import scratch
from tt_server.storage.factory import close_quietly, enter, make_object_buckets, open_stores
from tt_server.tracing import Tracing, start_tracing
from tt_server.training.service import TrainingService

if TYPE_CHECKING:
    from tt_server.supervised import WorkerLink

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    registry_service_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"].full_name,
    inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    jobs_service_pb2.DESCRIPTOR.services_by_name["JobsService"].full_name,
)


class Application:
    def __init__(
        self,
        settings: Settings | None = None,
        link: WorkerLink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``link``: this process is one of the supervisor's serving workers (tt_server/supervisor.py); it
        carries registry events and job ids to the other workers and decides when health says SERVING.
        ``clock``: the model manager's (resolution expiries, load backoffs); tests pass a fake one to pass them
        at once."""
        self.settings = settings or Settings()
        self.link = link
        self._clock = clock
        self._serving = False
        self.port: int = 0
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._stopping = False
        self._tracing: Tracing | None = None
        self._http: HttpServer | None = None
        self.http_port: int = 0
        self.embedded_worker: EmbeddedWorker | None = None
        self._resources = contextlib.AsyncExitStack()  # closed in reverse order by stop() or a failed start()

    async def start(self) -> None:
        """Open the stores, build the domain, listen and serve. On failure (a busy port, a database that cannot be
        reached, ...) everything opened so far is closed again before the error propagates: nothing is left
        running (SQLite's worker thread, for one, would keep the process alive)."""
        try:
            await self._start()
        except BaseException:
            self._stopping = True
            # Failures here are logged: the start-up's own error is the one to report.
            steps: tuple[Callable[[], Awaitable[None]], ...] = (
                functools.partial(self._halt, 0),
                self._resources.aclose,
            )
            for step in steps:
                try:
                    await step()
                except Exception:
                    log.warning("closing after a failed start-up failed", exc_info=True)
            self._stopped.set()  # a later stop() (or wait()) returns at once
            raise

    async def _start(self) -> None:
        started = time.perf_counter()
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        s.scratch_dir.mkdir(parents=True, exist_ok=True)
        # What a killed run left: scratch folders whose owner lock is free (storage/scratch.py).
        await asyncio.to_thread(scratch.sweep_abandoned, s.scratch_dir, s.scratch_max_age_seconds)

        resources = self._resources
        # Embedded mode under the supervisor (TT_WORKERS): registry events and job ids reach the other workers
        # through its link; with RabbitMQ they go through RabbitMQ as in any replica.
        link = self.link if not s.amqp_url else None
        self.stores = await resources.enter_async_context(
            open_stores(s, events=link.events if link else None, broker=link.broker if link else None)
        )
        self.metadata = self.stores.metadata
        self.blobs = self.stores.blobs
        self.events: EventBus = self.stores.events
        self.broker = self.stores.broker
        self.job_store = self.stores.jobs
        # TensorFlow work (artifact inspection, model loads) runs here, never on the event loop.
        self.loader_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tt-loader")
        resources.push_async_callback(
            close_quietly, lambda: self.loader_executor.shutdown(wait=False, cancel_futures=True), "loader executor"
        )
        self.registry = Registry(self.metadata, self.blobs, self.events, s, self.loader_executor)
        self.models = ModelManager(
            self.metadata,
            self.blobs,
            s.data_dir / "model-cache",
            s,
            clock=self._clock,
            loader_factory=loader_factory(s),
        )
        resources.push_async_callback(close_quietly, self.models.close, "model manager")
        await self.models.start(self.events)
        self.inference = InferenceService(self.models)
        # Online learning: one session per model across replicas (Postgres advisory locks, else in-process).
        self.leases = self.stores.leases
        self.training = TrainingService(self.registry, self.blobs, self.leases, s)
        # The model repository (TT_MODEL_REPOSITORY): imported, and what its policies serve warmed, before SERVING.
        self.repository: ModelRepository | None = None
        if s.model_repository:
            self.repository = ModelRepository(s.model_repository, self.registry, self.leases, s)
            report = await self.repository.sync()
            await self.repository.preload(self.models, report.models)
        # Jobs: RabbitMQ and tt-worker processes when TT_AMQP_URL is set, else an in-process queue and worker.
        # Embedded mode with workers: one of them runs jobs; the others forward job ids to it.
        # Jobs may also read and write the object storage callers name (s3:// URIs), when the operator allows it.
        self.job_blobs = JobBlobs(self.blobs, make_object_buckets(s))
        await enter(resources, self.job_blobs, "job object storage")
        self.jobs = JobsService(self.job_store, self.job_blobs, self.broker, self.registry, s)
        # The blob GC (run in the background): one table for the registry's and the jobs' blobs, so it deletes
        # through job_blobs, which also reaches result keys in callers' buckets.
        self.sweeper = Sweeper(self.metadata, self.job_blobs, s)
        if not (s.amqp_url or (self.link is not None and not self.link.runs_jobs)):
            concurrency = max(1, s.embedded_job_workers)
            runner = JobRunner(
                self.job_store, self.job_blobs, self.models, s, notifier=self.jobs.notifier, concurrency=concurrency
            )
            resources.callback(runner.close)
            self.embedded_worker = EmbeddedWorker(runner, self.broker, self.job_store, s, concurrency)

        auth = (
            TokenAuthenticator(s.auth_tokens_file, s.auth_public_health, s.auth_public_reflection)
            if s.auth_tokens_file
            else None
        )
        limiter = RateLimiter(s.rate_limit_per_second, s.rate_limit_burst) if s.rate_limit_per_second > 0 else None
        access = AccessLog(s.access_log, s.access_log_sample_ratio) if s.access_log != "off" else None
        middleware = Middleware(
            {*SERVICE_NAMES, *compat.SERVICE_NAMES}, auth, limiter, s.max_concurrent_rpcs, access=access
        )
        # Tracing's interceptor runs around the (wrapped) handlers: its span encloses everything the middleware
        # does (auth, errors, metrics).
        self._tracing = start_tracing({*SERVICE_NAMES, *compat.SERVICE_NAMES}) if s.otel_enabled else None
        if self._tracing is not None:
            resources.push_async_callback(close_quietly, self._tracing.shutdown, "tracing")
        metrics.exemplars = self._tracing is not None  # trace ids on the per-model latency histograms
        server = grpc.aio.server(
            interceptors=[self._tracing.interceptor] if self._tracing else None,
            options=[
                # gRPC shares ports by default (SO_REUSEPORT): a second server on a busy port would start and
                # take half the connections with a registry of its own. Only supervised workers (TT_WORKERS)
                # share their port, on purpose; otherwise a busy port fails the start-up.
                ("grpc.so_reuseport", int(s.grpc_port_sharing)),
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                *(
                    [
                        ("grpc.max_connection_age_ms", int(s.max_connection_age_seconds * 1000)),
                        # Streams already open (Train, PredictBatch) run on to their end: only new calls move.
                        ("grpc.max_connection_age_grace_ms", 2**31 - 1),
                    ]
                    if s.max_connection_age_seconds > 0
                    else []
                ),
            ],
            maximum_concurrent_rpcs=None,  # enforced by the middleware, which spares health checks
        )
        # Every service is registered through the middleware, which wraps each method's handler.
        serving: Any = middleware.on(server)
        registry_service_pb2_grpc.add_ModelRegistryServiceServicer_to_server(RegistryServicer(self.registry), serving)
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(self.inference, self.training), serving
        )
        jobs_service_pb2_grpc.add_JobsServiceServicer_to_server(JobsServicer(self.jobs), serving)
        # TF Serving and Open Inference Protocol clients, over the same inference path.
        compat.add_to_server(
            serving,
            self.inference,
            self.registry,
            s.max_request_elements,
            is_ready=lambda: self._serving and not self._stopping,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, serving)
        add_reflection_to_server(
            DocumentedReflectionServicer(
                (
                    *SERVICE_NAMES,
                    *compat.SERVICE_NAMES,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    REFLECTION_V1,
                    reflection.SERVICE_NAME,
                ),
                documented_files(),
            ),
            serving,
        )
        self._server = server
        try:
            self.port = (
                server.add_secure_port(s.grpc_address, _server_credentials(s))
                if s.tls_cert_file
                else server.add_insecure_port(s.grpc_address)
            )
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {s.grpc_address} (is the address in use?)")
        await server.start()
        if self.link is None:  # a supervised worker serves once the supervisor says all workers do
            await self.set_serving(True)
        self._tasks.append(asyncio.create_task(self._collect_garbage_forever(), name="tt-blob-gc"))
        self._tasks.append(asyncio.create_task(self._check_models_forever(), name="tt-model-check"))
        if self.repository is not None and s.model_repository_poll_seconds > 0:
            poll = self.repository.run_forever(s.model_repository_poll_seconds)
            self._tasks.append(asyncio.create_task(poll, name="tt-model-repository"))
        if self.embedded_worker is not None:
            await self.embedded_worker.start()
        if s.metrics_address:
            metrics.serve(s.metrics_address, resources)
        if s.http_address:
            self._http = build_http_server(
                s, self.inference, self.registry, self.jobs, auth, limiter, is_ready=lambda: not self._stopping
            )
            self.http_port = await self._http.start(s.http_address, reuse_port=s.grpc_port_sharing)
        # Where it listens and what it uses, as an operator checks a deployment (no secret: URLs are masked).
        log.info(
            "server started",
            extra={
                "address": s.grpc_address,
                "port": self.port,
                "tls": ("mutual" if s.tls_client_ca_file else "on") if s.tls_cert_file else "off",
                "auth": "tokens" if s.auth_tokens_file else "off",
                "http_address": s.http_address or None,
                "http_port": self.http_port or None,
                "metrics_address": s.metrics_address or None,
                **stores_in_use(s),
                "startup_seconds": round(time.perf_counter() - started, 3),
            },
        )
        exposed = [a for a in (s.grpc_address, s.http_address) if a and not _is_loopback(a)]
        # Under the supervisor every worker has the same settings: worker 0 alone says it, not each of TT_WORKERS.
        if auth is None and exposed and (self.link is None or self.link.index == 0):
            log.warning(
                "authentication is off on an address other hosts can reach: any caller may upload, delete and "
                "train (set TT_AUTH_TOKENS_FILE)",
                extra={"addresses": ", ".join(exposed)},
            )

    async def set_serving(self, serving: bool) -> None:
        """Health (every service) SERVING or NOT_SERVING; ignored once draining."""
        if self._stopping:
            return
        self._serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES, *compat.SERVICE_NAMES):
            await self._health.set(name, status)
        metrics.SERVER_READY.set(1 if serving else 0)

    @property
    def address(self) -> str:
        host = self.settings.grpc_address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @property
    def http_url(self) -> str:
        """``http(s)://host:port`` of the HTTP front (TT_HTTP_ADDRESS must be set)."""
        host = self.settings.http_address.rsplit(":", 1)[0]
        scheme = "https" if self.settings.tls_cert_file else "http"
        return f"{scheme}://{host}:{self.http_port}"

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop; safe to call more than once."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        log.info("draining", extra={"grace_seconds": grace})
        await self._health.enter_graceful_shutdown()  # every service NOT_SERVING, Watch streams told
        metrics.SERVER_READY.set(0)
        if self.settings.drain_delay_seconds > 0:
            await asyncio.sleep(self.settings.drain_delay_seconds)
        # Training streams end first, while the server can still tell their clients UNAVAILABLE: each
        # checkpoints as its on_abort says and releases its lease.
        await self.training.close()
        await self._halt(grace)
        await self._resources.aclose()  # the job runner, models, executor, stores, ... in reverse order of opening
        self._stopped.set()
        log.info("server stopped")

    async def _halt(self, grace: float) -> None:
        """Stop what serves and works: both transports drain at once (no new connections, in-flight calls get
        ``grace``), background tasks end, and running jobs go back to the queue (and the store) at once."""
        await asyncio.gather(
            *([self._server.stop(grace)] if self._server is not None else []),
            *([self._http.stop(grace)] if self._http is not None else []),
        )
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.embedded_worker is not None:
            await self.embedded_worker.stop(grace)

    async def _check_models_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_poll_seconds)
            try:
                await self.models.check_loaded()
            except Exception:
                log.warning(
                    "checking loaded models against the registry failed; will retry",
                    exc_info=True,
                    extra={"throttle": True},
                )

    async def _collect_garbage_forever(self) -> None:
        while True:
            try:
                while await self.sweeper.collect_garbage() > 0:
                    pass
                await self.sweeper.sweep_leftovers()
            except Exception:
                log.warning("blob garbage collection failed; will retry", exc_info=True, extra={"throttle": True})
            await asyncio.sleep(self.settings.gc_interval_seconds)


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _server_credentials(s: Settings) -> grpc.ServerCredentials:
    """TLS from PEM files; with a client CA, clients must present a certificate it signed (mTLS)."""
    if s.tls_cert_file is None or s.tls_key_file is None:
        raise ValueError("TT_TLS_CERT_FILE and TT_TLS_KEY_FILE must be set together")
    ca = s.tls_client_ca_file.read_bytes() if s.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(s.tls_key_file.read_bytes(), s.tls_cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )
