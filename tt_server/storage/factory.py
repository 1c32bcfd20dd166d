"""Chooses the storage implementations from the settings: production when configured, embedded otherwise."""

from __future__ import annotations

import hashlib

from tt_server.config import Settings
from tt_server.storage.blobs import BlobStore
from tt_server.storage.metadata import MetadataStore


def _token_secret(settings: Settings) -> bytes:
    # Page tokens only need to be tamper-evident (their cursor is not sensitive), and every replica must
    # accept every other replica's tokens, so a configured or fixed secret beats a random one.
    return hashlib.sha256(b"tt-page-token:" + settings.page_token_secret.encode()).digest()


def make_metadata_store(settings: Settings) -> MetadataStore:
    if settings.database_url:
        from tt_server.storage.postgres import PostgresMetadataStore

        return PostgresMetadataStore(
            settings.database_url, pool_size=settings.database_pool_size, token_secret=_token_secret(settings)
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
        )
    from tt_server.storage.local import LocalBlobStore

    return LocalBlobStore(settings.blob_dir)
