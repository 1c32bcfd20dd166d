"""Where a job's bytes live: the blob store, or object storage the caller names with an ``s3://`` URI.

``JobBlobs`` is the ``BlobStore`` the jobs code uses: keys of the form ``s3://bucket/key`` go to that bucket
(through ``S3Objects``, the server's S3 client and credentials), every other key to the blob store. A URI
is stored in the job row as its input or result key, so the worker and ``GetJobResults`` read it alike.

Which URIs a caller may name is the operator's choice, ``job_s3_allowed_prefixes``: ``check_uri`` allows a
URI only under one of them (a prefix names a bucket, or a "folder" in it: ``s3://lake/scoring/`` allows
``s3://lake/scoring/day1.csv`` but not ``s3://lake/scoring-private/x``); anything else is PermissionDenied,
whether or not it exists. A bare key (no scheme) is taken relative to the first allowed prefix.

What the server removes from a caller's bucket: its own attempts' result objects that no commit claimed, and
unfinished uploads to exactly those keys (``JobBlobs.delete``), never anything else. Inputs and the result of
a SUCCEEDED job are the caller's and stay.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol

from tt_server.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from tt_server.storage.blobs import BlobInfo, BlobStore

log = logging.getLogger(__name__)

SCHEME = "s3://"


class ObjectBucket(BlobStore, Protocol):
    """One bucket of object storage (``tt_server.storage.s3.S3BlobStore``)."""

    async def abort_writes(self, key: str) -> int:
        """Abort every unfinished write to exactly ``key``; returns how many."""
        ...


class ObjectBuckets(Protocol):
    """Any bucket of object storage, as a blob store (``tt_server.storage.s3.S3Objects``)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def bucket(self, name: str) -> ObjectBucket: ...


def is_uri(key: str) -> bool:
    return key.startswith(SCHEME)


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); the key may be empty (a bucket's root)."""
    bucket, _, key = uri.removeprefix(SCHEME).partition("/")
    return bucket, key


def normalise_prefix(prefix: str) -> str:
    """An allowed prefix as a folder: ``s3://lake/scoring`` -> ``s3://lake/scoring/``."""
    if not is_uri(prefix) or not split_uri(prefix)[0]:
        raise ValueError(f"{prefix!r} is not an s3://bucket[/prefix] URI")
    return prefix if prefix.endswith("/") else prefix + "/"


def check_uri(value: str, allowed: Sequence[str], field: str, folder: bool = False) -> str:
    """The full ``s3://`` URI the caller means by ``value``, if it is under an allowed prefix.
    ``folder``: ``value`` names a prefix to write under (returned ending with "/"), not an object."""
    prefixes = [normalise_prefix(p) for p in allowed]
    if not prefixes:
        raise PermissionDenied(f"{field}: this server reads and writes no object storage (no allowed prefixes)")
    uri = value if is_uri(value) else prefixes[0] + value.lstrip("/")
    bucket, key = split_uri(uri)
    if folder and key and not key.endswith("/"):
        uri, key = uri + "/", key + "/"
    if not bucket or (not key and not folder):
        raise InvalidArgument.field(field, f"{value!r} is not an s3://bucket/key URI")
    parts = key.split("/")
    if any(part in (".", "..") for part in parts) or "" in parts[:-1]:
        # S3 keys are literal, but tools that normalise paths would read a different object: refuse.
        raise InvalidArgument.field(field, f"{value!r} has an empty, '.' or '..' path segment")
    if not any(uri.startswith(p) for p in prefixes):
        raise PermissionDenied(
            f"{field}: {uri!r} is outside the object storage this server lets callers use ({', '.join(prefixes)})"
        )
    return uri


class JobBlobs:
    """A ``BlobStore`` over the blob store and, for ``s3://`` keys, object storage."""

    def __init__(self, blobs: BlobStore, objects: ObjectBuckets | None = None) -> None:
        self.blobs = blobs
        self._objects = objects

    async def open(self) -> None:
        if self._objects is not None:
            await self._objects.open()

    async def close(self) -> None:
        if self._objects is not None:
            await self._objects.close()

    def _route(self, key: str) -> tuple[BlobStore, str]:
        if not is_uri(key):
            return self.blobs, key
        return self._bucket(key)

    def _bucket(self, key: str) -> tuple[ObjectBucket, str]:
        if self._objects is None:
            raise FailedPrecondition(
                f"{key!r} is in object storage, which this process is not set up to reach "
                "(set TT_JOB_S3_ALLOWED_PREFIXES for the server and the workers alike)"
            )
        bucket, object_key = split_uri(key)
        return self._objects.bucket(bucket), object_key

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> BlobInfo:
        store, object_key = self._route(key)
        info = await store.put_stream(object_key, chunks)
        return BlobInfo(key, info.size, info.sha256)

    async def put_file(self, key: str, path: Path) -> BlobInfo:
        store, object_key = self._route(key)
        info = await store.put_file(object_key, path)
        return BlobInfo(key, info.size, info.sha256)

    def get_stream(self, key: str, offset: int = 0, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        store, object_key = self._route(key)
        return store.get_stream(object_key, offset, chunk_size)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        store, object_key = self._route(key)
        return await store.get_range(object_key, offset, length)

    async def get_file(self, key: str, path: Path) -> None:
        store, object_key = self._route(key)
        await store.get_file(object_key, path)

    async def size(self, key: str) -> int:
        store, object_key = self._route(key)
        return await store.size(object_key)

    async def exists(self, key: str) -> bool:
        store, object_key = self._route(key)
        return await store.exists(object_key)

    async def delete(self, key: str) -> None:
        """Delete ``key``; in a caller's bucket also abort unfinished uploads to exactly that key (a killed
        attempt's parts, which S3 keeps and bills for good). The server deletes in a caller's bucket only its
        own attempts' result keys, so a caller's other objects and uploads are never touched."""
        if not is_uri(key):
            await self.blobs.delete(key)
            return
        bucket, object_key = self._bucket(key)
        try:
            # Aborted first, so that a late writer cannot complete the upload after the delete.
            try:
                await bucket.abort_writes(object_key)
            except PermissionDenied:
                # Credentials that may delete but not list or abort uploads: the object still goes.
                log.warning(
                    "could not look for unfinished uploads to a job result in a caller's bucket "
                    "(grant s3:ListBucketMultipartUploads and s3:AbortMultipartUpload)",
                    extra={"blob_key": key, "throttle": True},
                )
            await bucket.delete(object_key)
        except NotFound:
            pass  # the bucket is gone, and with it whatever was written there

    async def abort_stale_writes(self, older_than_seconds: float) -> int:
        # The server's own store only: it cannot tell its own unfinished uploads in a caller's bucket from the
        # caller's by age; those are aborted key by key when their GC entry falls due (``delete``).
        return await self.blobs.abort_stale_writes(older_than_seconds)

    async def list_keys(self, prefix: str) -> list[str]:
        store, object_prefix = self._route(prefix)
        keys = await store.list_keys(object_prefix)
        if not is_uri(prefix):
            return keys
        bucket, _ = split_uri(prefix)
        return [f"{SCHEME}{bucket}/{k}" for k in keys]
