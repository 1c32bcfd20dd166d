"""Chooses the storage implementations from the settings (production when configured, embedded otherwise) and
opens them: ``open_stores`` is the one place both processes (``tt_server/app.py``, ``tt_worker/main.py``) get
their stores from.

``open_stores(settings)`` is an async context manager yielding ``Stores``: the SQL database (opened once,
shared by the metadata and job stores), the blob store, the registry event bus and the job broker, opened in
that order on an ``AsyncExitStack`` and closed in reverse order on the way out; if one of them fails to open,
those opened before it are closed before the error propagates. Leases need no opening; they are chosen here.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tt_server.config import Settings
from tt_server.events import EventBus, LocalEventBus
from tt_server.storage.blobs import BlobStore
from tt_server.storage.broker import Broker
from tt_server.storage.jobs import JobStore
from tt_server.storage.leases import LeaseManager, LocalLeaseManager, PostgresLeaseManager
from tt_server.storage.metadata import MetadataStore
from tt_server.storage.sql import SqlMetadataStore
from tt_server.storage.sql_jobs import SqlJobStore
from tt_server.storage.sqldb import SqlBackend

if TYPE_CHECKING:
    from tt_server.storage.s3 import S3BlobStore, S3Objects

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Stores:
    """A process's open stores (see the module docstring); the context manager that yielded it owns them."""

    metadata: MetadataStore
    jobs: JobStore  # over the metadata store's database
    blobs: BlobStore
    events: EventBus
    broker: Broker
    leases: LeaseManager  # one holder per name across replicas (training sessions, the model repository)


class _Opens(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...


@asynccontextmanager
async def open_stores(
    settings: Settings,
    *,
    broker_name: str = "tensortrigger",
    events: EventBus | None = None,
    broker: Broker | None = None,
) -> AsyncIterator[Stores]:
    """Open every store ``settings`` configure; close them on the way out (module docstring).

    ``events`` / ``broker``: use these instead of the ones the settings choose (a supervised server worker's
    link to its siblings; a job worker, which hears no registry events); they are opened and closed here too.
    ``broker_name`` names the RabbitMQ connection (shown by ``rabbitmqctl``).
    """
    async with AsyncExitStack() as stack:
        database = make_sql_backend(settings)
        await enter(stack, database, "database")
        secret = _token_secret(settings)
        blobs = make_blob_store(settings)
        await enter(stack, blobs, "blob store")
        events = events if events is not None else make_event_bus(settings)
        await enter(stack, events, "event bus")
        broker = broker if broker is not None else make_broker(settings, broker_name)
        await enter(stack, broker, "job queue")
        yield Stores(
            metadata=SqlMetadataStore(database, secret),
            jobs=make_job_store(database, secret),
            blobs=blobs,
            events=events,
            broker=broker,
            leases=make_lease_manager(settings),
        )


async def enter(stack: AsyncExitStack, resource: _Opens, name: str) -> None:
    """Open ``resource`` and have ``stack`` close it; a failed close is logged, so it neither hides the error
    that unwinds the stack nor stops the other closes."""
    await resource.open()
    stack.push_async_callback(close_quietly, resource.close, name)


async def close_quietly(close: Callable[[], Awaitable[object] | object], name: str) -> None:
    try:
        pending = close()
        if isinstance(pending, Awaitable):
            await pending
    except Exception:
        log.warning("closing the %s failed", name, exc_info=True)


def _token_secret(settings: Settings) -> bytes:
    # Page tokens only need to be tamper-evident (their cursor is not sensitive), and every replica must
    # accept every other replica's tokens, so a configured or fixed secret beats a random one.
    return hashlib.sha256(b"tt-page-token:" + settings.page_token_secret.encode()).digest()


def make_sql_backend(settings: Settings) -> SqlBackend:
    """PostgreSQL when ``database_url`` is set, else the SQLite file in the data folder."""
    if settings.database_url:
        from tt_server.storage.postgres import PostgresBackend

        return PostgresBackend(
            settings.database_url,
            pool_size=settings.database_pool_size,
            connect_timeout=settings.database_connect_timeout_seconds,
            command_timeout=settings.database_command_timeout_seconds or None,
        )
    from tt_server.storage.sqlite import SqliteBackend

    return SqliteBackend(settings.sqlite_path)


def make_metadata_store(settings: Settings) -> MetadataStore:
    """A metadata store with a database of its own (``open()`` connects it); processes use ``open_stores``."""
    return SqlMetadataStore(make_sql_backend(settings), _token_secret(settings))


def make_job_store(database: SqlBackend, token_secret: bytes) -> JobStore:
    """Jobs live in the metadata database (one schema, one pool): the SQL job store is the metadata store's
    sibling over the same backend."""
    return SqlJobStore(database, token_secret)


def make_event_bus(settings: Settings) -> EventBus:
    """Registry events fan out through RabbitMQ when ``amqp_url`` is set; otherwise they stay in-process."""
    if settings.amqp_url:
        from tt_server.storage.amqp_events import AmqpEventBus

        return AmqpEventBus(settings.amqp_url)
    return LocalEventBus()


def make_lease_manager(settings: Settings) -> LeaseManager:
    """PostgreSQL advisory locks when a database URL is set (replicas share it), in-process locks otherwise."""
    if settings.database_url:
        return PostgresLeaseManager(settings.database_url, settings.database_connect_timeout_seconds)
    return LocalLeaseManager()


def make_blob_store(settings: Settings) -> BlobStore:
    if settings.s3_bucket:
        return make_s3_blob_store(settings, settings.s3_bucket, settings.s3_prefix)
    from tt_server.storage.local import LocalBlobStore

    return LocalBlobStore(settings.blob_dir)


def make_s3_blob_store(settings: Settings, bucket: str, prefix: str, *, create_bucket: bool = True) -> S3BlobStore:
    """A blob store over ``bucket``/``prefix`` with the configured S3 endpoint, region, timeouts and part sizes
    (the server's own bucket, or a model repository's)."""
    from tt_server.storage.s3 import S3BlobStore

    return S3BlobStore(
        bucket=bucket,
        endpoint_url=settings.s3_endpoint_url or None,
        region=settings.s3_region,
        prefix=prefix,
        part_size=settings.s3_part_size_bytes,
        upload_concurrency=settings.s3_upload_concurrency,
        connect_timeout=settings.s3_connect_timeout_seconds,
        read_timeout=settings.s3_read_timeout_seconds,
        max_attempts=settings.s3_max_attempts,
        create_bucket=create_bucket,
    )


def make_object_buckets(settings: Settings) -> S3Objects | None:
    """Object storage that job callers may name (``s3://`` URIs), when the operator allowed any prefix."""
    if not settings.job_s3_allowed_prefixes:
        return None
    from tt_server.storage.s3 import S3Objects

    return S3Objects(
        settings.s3_endpoint_url or None,
        settings.s3_region,
        part_size=settings.s3_part_size_bytes,
        upload_concurrency=settings.s3_upload_concurrency,
        connect_timeout=settings.s3_connect_timeout_seconds,
        read_timeout=settings.s3_read_timeout_seconds,
        max_attempts=settings.s3_max_attempts,
    )


def make_broker(settings: Settings, connection_name: str = "tensortrigger") -> Broker:
    """RabbitMQ when ``amqp_url`` is set; otherwise the in-process queue of the embedded mode."""
    if settings.amqp_url:
        from tt_server.storage.amqp import AmqpBroker

        return AmqpBroker(
            settings.amqp_url,
            settings.amqp_jobs_queue,
            connection_name,
            publish_timeout=settings.amqp_publish_timeout_seconds,
            heartbeat=settings.amqp_heartbeat_seconds,
        )
    from tt_server.storage.local_broker import LocalBroker

    return LocalBroker()
