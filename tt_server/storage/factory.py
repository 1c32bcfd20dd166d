"""Chooses the storage implementations from the settings: production when configured, embedded otherwise."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from tt_server.config import Settings
from tt_server.storage.blobs import BlobStore
from tt_server.storage.broker import Broker
from tt_server.storage.jobs import JobStore
from tt_server.storage.metadata import MetadataStore
from tt_server.storage.sql_jobs import SqlJobStore

if TYPE_CHECKING:
    from tt_server.storage.s3 import S3Objects


def _token_secret(settings: Settings) -> bytes:
    # Page tokens only need to be tamper-evident (their cursor is not sensitive), and every replica must
    # accept every other replica's tokens, so a configured or fixed secret beats a random one.
    return hashlib.sha256(b"tt-page-token:" + settings.page_token_secret.encode()).digest()


def make_metadata_store(settings: Settings) -> MetadataStore:
    if settings.database_url:
        from tt_server.storage.postgres import PostgresMetadataStore

        return PostgresMetadataStore(
            settings.database_url,
            pool_size=settings.database_pool_size,
            token_secret=_token_secret(settings),
            connect_timeout=settings.database_connect_timeout_seconds,
            command_timeout=settings.database_command_timeout_seconds or None,
        )
    from tt_server.storage.sqlite import SqliteMetadataStore

    return SqliteMetadataStore(settings.sqlite_path, token_secret=_token_secret(settings))


def make_blob_store(settings: Settings) -> BlobStore:
    if settings.s3_bucket:
        from tt_server.storage.s3 import S3BlobStore

        return S3BlobStore(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region,
            prefix=settings.s3_prefix,
            part_size=settings.s3_part_size_bytes,
            upload_concurrency=settings.s3_upload_concurrency,
            connect_timeout=settings.s3_connect_timeout_seconds,
            read_timeout=settings.s3_read_timeout_seconds,
            max_attempts=settings.s3_max_attempts,
        )
    from tt_server.storage.local import LocalBlobStore

    return LocalBlobStore(settings.blob_dir)


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


def make_job_store(metadata: MetadataStore) -> JobStore:
    """Jobs live in the metadata database: the SQL store implements both interfaces."""
    if not isinstance(metadata, SqlJobStore):
        raise TypeError(f"{type(metadata).__name__} does not store jobs")
    return metadata


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
