"""The composition root: settings -> stores -> domain -> gRPC server. Nothing else wires components.

``Application.start()`` returns once the server is listening (tests use it directly); ``wait()`` blocks until
it stops; ``stop()`` drains: health goes NOT_SERVING at once, new calls are still taken for the drain delay,
in-flight calls get the grace period, then the stores close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.simple_server import WSGIServer

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
from tt_server.api.middleware import Middleware
from tt_server.api.reflection import V1_SERVICE_NAME as REFLECTION_V1
from tt_server.api.reflection import DocumentedReflectionServicer, add_reflection_to_server, documented_files
from tt_server.api.registry import RegistryServicer
from tt_server.config import Settings
from tt_server.events import EventBus, LocalEventBus
from tt_server.jobs.service import JobsService
from tt_server.jobs.worker import EmbeddedWorker
from tt_server.registry.service import Registry, sweep_scratch
from tt_server.runtime.manager import ModelManager
from tt_server.runtime.service import InferenceService
from tt_server.storage.amqp_events import AmqpEventBus
from tt_server.storage.factory import make_blob_store, make_broker, make_job_store, make_metadata_store
from tt_server.storage.leases import make_lease_manager
from tt_server.tracing import Tracing, start_tracing
from tt_server.training.service import TrainingService

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    registry_service_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"].full_name,
    inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    jobs_service_pb2.DESCRIPTOR.services_by_name["JobsService"].full_name,
)


class Application:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.port: int = 0
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._stopping = False
        self._metrics_server: WSGIServer | None = None
        self._tracing: Tracing | None = None

    async def start(self) -> None:
        started = time.perf_counter()
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        s.scratch_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(sweep_scratch, s.scratch_dir, s.scratch_max_age_seconds)  # a killed run's leftovers

        self.metadata = make_metadata_store(s)
        self.blobs = make_blob_store(s)
        await self.metadata.open()
        await self.blobs.open()
        self.events: EventBus
        if s.amqp_url:
            self.events = AmqpEventBus(s.amqp_url)
            await self.events.open()
        else:
            self.events = LocalEventBus()
        # TensorFlow work (artifact inspection, model loads) runs here, never on the event loop.
        self.loader_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tt-loader")
        self.registry = Registry(self.metadata, self.blobs, self.events, s, self.loader_executor)
        self.models = ModelManager(self.metadata, self.blobs, s.data_dir / "model-cache", s)
        await self.models.start(self.events)
        self.inference = InferenceService(self.models, s)
        # Online learning: one session per model across replicas (Postgres advisory locks, else in-process).
        self.leases = make_lease_manager(s)
        self.training = TrainingService(self.registry, self.blobs, self.leases, s)
        # Jobs: RabbitMQ and tt-worker processes when TT_AMQP_URL is set, else an in-process queue and worker.
        self.broker = make_broker(s)
        await self.broker.open()
        job_store = make_job_store(self.metadata)
        self.jobs = JobsService(job_store, self.blobs, self.broker, self.registry, s)
        self.embedded_worker = (
            None
            if s.amqp_url
            else EmbeddedWorker(job_store, self.blobs, self.broker, self.models, s, self.jobs.notifier)
        )

        auth = (
            TokenAuthenticator(s.auth_tokens_file, s.auth_public_health, s.auth_public_reflection)
            if s.auth_tokens_file
            else None
        )
        limiter = RateLimiter(s.rate_limit_per_second, s.rate_limit_burst) if s.rate_limit_per_second > 0 else None
        middleware = Middleware({*SERVICE_NAMES, *compat.SERVICE_NAMES}, auth, limiter, s.max_concurrent_rpcs)
        # Tracing's interceptor runs around the (wrapped) handlers: its span encloses everything the middleware
        # does (auth, errors, metrics).
        self._tracing = start_tracing({*SERVICE_NAMES, *compat.SERVICE_NAMES}) if s.otel_enabled else None
        server = grpc.aio.server(
            interceptors=[self._tracing.interceptor] if self._tracing else None,
            options=[
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
            serving, self.inference, self.registry, s.max_request_elements, is_ready=lambda: not self._stopping
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
        self.port = (
            server.add_secure_port(s.grpc_address, _server_credentials(s))
            if s.tls_cert_file
            else server.add_insecure_port(s.grpc_address)
        )
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {s.grpc_address}")
        await server.start()
        self._server = server
        for name in ("", *SERVICE_NAMES, *compat.SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._tasks.append(asyncio.create_task(self._collect_garbage_forever(), name="tt-blob-gc"))
        self._tasks.append(asyncio.create_task(self._check_models_forever(), name="tt-model-check"))
        if self.embedded_worker is not None:
            await self.embedded_worker.start()
        if s.metrics_address:
            self._metrics_server, _ = metrics.serve(s.metrics_address)
        log.info(
            "server started",
            extra={
                "address": s.grpc_address,
                "port": self.port,
                "database": "postgresql" if s.database_url else "sqlite",
                "blobs": "s3" if s.s3_bucket else "local",
                "startup_seconds": round(time.perf_counter() - started, 3),
            },
        )

    @property
    def address(self) -> str:
        host = self.settings.grpc_address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

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
        if self.settings.drain_delay_seconds > 0:
            await asyncio.sleep(self.settings.drain_delay_seconds)
        # Training streams end first, while the server can still tell their clients UNAVAILABLE: each
        # checkpoints as its on_abort says and releases its lease.
        await self.training.close()
        if self._server is not None:
            await self._server.stop(grace)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.embedded_worker is not None:
            await self.embedded_worker.stop(grace)  # running jobs go back to the queue (and the store) at once
        await self.broker.close()
        if isinstance(self.events, AmqpEventBus):
            await self.events.close()
        await self.models.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.loader_executor.shutdown(wait=False, cancel_futures=True)
        await self.blobs.close()
        await self.metadata.close()
        if self._tracing is not None:
            await self._tracing.shutdown()
        self._stopped.set()
        log.info("server stopped")

    async def _check_models_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_poll_seconds)
            try:
                await self.models.check_loaded()
            except Exception:
                log.warning("checking loaded models against the registry failed; will retry", exc_info=True)

    async def _collect_garbage_forever(self) -> None:
        while True:
            try:
                while await self.registry.collect_garbage() > 0:
                    pass
                await self.registry.sweep_leftovers()
            except Exception:
                log.warning("blob garbage collection failed; will retry", exc_info=True)
            await asyncio.sleep(self.settings.gc_interval_seconds)


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
