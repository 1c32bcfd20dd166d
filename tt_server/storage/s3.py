"""S3BlobStore: the production BlobStore on any S3-compatible service, through aiobotocore.

Writes stream: data is cut into ``part_size`` parts and sent as a multipart upload, so memory holds one part
whatever the object's size; an object smaller than one part goes in a single PutObject. Every request carries
its SHA-256 (``ChecksumSHA256``), which S3 verifies before accepting the bytes; the whole object's digest is
returned to the caller (the registry records it with the version). A failed or cancelled upload is aborted,
so S3 keeps no half-written parts. Credentials come from the usual AWS chain
(environment, config files, instance role).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.handlers import add_expect_header

from tt_server.errors import NotFound, ResourceExhausted, Unavailable
from tt_server.storage.blobs import BlobInfo
from tt_server.storage.local import CHUNK_SIZE, read_file_chunks, write_file_chunks

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef, CreateBucketConfigurationTypeDef

log = logging.getLogger(__name__)

MiB = 1 << 20
MIN_PART_SIZE = 5 * MiB  # S3 refuses smaller parts (except the last)
MAX_PARTS = 10_000  # S3's limit on parts per multipart upload

_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


class S3BlobStore:
    """Blobs as objects under ``prefix`` in ``bucket``; the bucket is created on ``open()`` if missing."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        prefix: str = "",
        part_size: int = 8 * MiB,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
    ) -> None:
        """The timeouts bound each attempt, ``max_attempts`` the attempts (botocore retries connection errors,
        throttling and 5xx with backoff); then the caller gets ``Unavailable``, never a call that hangs."""
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (the S3 minimum)")
        self._bucket = bucket
        self._endpoint_url = endpoint_url or None
        self._region = region
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._part_size = part_size
        self._config = AioConfig(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._stack = AsyncExitStack()
        self._s3: S3Client | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------
    async def open(self) -> None:
        client_context = get_session().create_client(
            "s3", endpoint_url=self._endpoint_url, region_name=self._region, config=self._config
        )
        self._s3 = await self._stack.enter_async_context(client_context)
        # No "Expect: 100-continue" on uploads: aiohttp waits for the 100 with no timeout at all, so an endpoint
        # that accepts the connection but never answers (a partition, a hung proxy) would hang the upload for
        # good. Without it the body is sent at once and the read timeout bounds the wait for the answer.
        self._s3.meta.events.unregister("before-call.s3", add_expect_header)
        try:
            await self._ensure_bucket()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._s3 = None
        await self._stack.aclose()

    @property
    def _client(self) -> S3Client:
        if self._s3 is None:
            raise Unavailable("blob store is not open")
        return self._s3

    async def _ensure_bucket(self) -> None:
        with _errors(self._bucket):
            try:
                await self._client.head_bucket(Bucket=self._bucket)
                return
            except ClientError as e:
                if _error_code(e) not in _MISSING_CODES | {"NoSuchBucket"}:
                    raise
            # us-east-1 is the one region that rejects an explicit location constraint.
            location = {} if self._region == "us-east-1" else {"LocationConstraint": self._region}
            config = cast("CreateBucketConfigurationTypeDef", location)  # the stubs list regions as literals
            try:
                await self._client.create_bucket(Bucket=self._bucket, CreateBucketConfiguration=config)
            except ClientError as e:
                if _error_code(e) != "BucketAlreadyOwnedByYou":  # another replica won the race
                    raise

    # --- writes -------------------------------------------------------------------------------------------
    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> BlobInfo:
        object_key = self._object_key(key)
        digest = hashlib.sha256()
        size = 0
        pending = bytearray()  # bytes not yet sent; at most one part plus one chunk
        upload_id: str | None = None
        parts: list[CompletedPartTypeDef] = []
        try:
            with _errors(key):
                async for chunk in chunks:
                    # hashlib releases the GIL on large buffers, so a worker thread keeps the loop free.
                    await asyncio.to_thread(digest.update, chunk)
                    size += len(chunk)
                    if size > self._part_size * MAX_PARTS:
                        raise ResourceExhausted(f"blob {key!r} is larger than {self._part_size * MAX_PARTS} bytes")
                    pending += chunk
                    while len(pending) >= self._part_size:
                        if upload_id is None:
                            created = await self._client.create_multipart_upload(
                                Bucket=self._bucket, Key=object_key, ChecksumAlgorithm="SHA256"
                            )
                            upload_id = created["UploadId"]
                        part = bytes(pending[: self._part_size])
                        del pending[: self._part_size]
                        parts.append(await self._upload_part(object_key, upload_id, len(parts) + 1, part))
                info = BlobInfo(key=key, size=size, sha256=digest.hexdigest())
                if upload_id is None:
                    await self._client.put_object(
                        Bucket=self._bucket,
                        Key=object_key,
                        Body=bytes(pending),
                        ChecksumSHA256=_b64(digest.digest()),
                    )
                    return info
                if pending:
                    parts.append(await self._upload_part(object_key, upload_id, len(parts) + 1, bytes(pending)))
                await self._client.complete_multipart_upload(
                    Bucket=self._bucket, Key=object_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
                return info
        except BaseException:
            if upload_id is not None:
                # Shielded so that a second cancellation cannot leave the parts behind (S3 bills for them).
                await asyncio.shield(self._abort(object_key, upload_id))
            raise

    async def _upload_part(self, object_key: str, upload_id: str, number: int, data: bytes) -> CompletedPartTypeDef:
        checksum = _b64(await asyncio.to_thread(lambda: hashlib.sha256(data).digest()))
        response = await self._client.upload_part(
            Bucket=self._bucket,
            Key=object_key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ChecksumSHA256=checksum,
        )
        return {"ETag": response["ETag"], "PartNumber": number, "ChecksumSHA256": checksum}

    async def _abort(self, object_key: str, upload_id: str) -> None:
        try:
            await self._client.abort_multipart_upload(Bucket=self._bucket, Key=object_key, UploadId=upload_id)
        except Exception:
            # The original error matters more; a bucket lifecycle rule can still reap the parts.
            log.warning("could not abort multipart upload", extra={"key": object_key}, exc_info=True)

    async def put_file(self, key: str, path: Path) -> BlobInfo:
        return await self.put_stream(key, read_file_chunks(path))

    async def delete(self, key: str) -> None:
        with _errors(key):
            await self._client.delete_object(Bucket=self._bucket, Key=self._object_key(key))

    # --- reads --------------------------------------------------------------------------------------------
    async def get_stream(self, key: str, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        if offset < 0:
            raise ValueError("offset must not be negative")
        # No Range header from 0: S3 answers "bytes=0-" on an empty object with 416 instead of no bytes.
        ranged: dict[str, Any] = {"Range": f"bytes={offset}-"} if offset else {}
        with _errors(key):
            try:
                response = await self._client.get_object(Bucket=self._bucket, Key=self._object_key(key), **ranged)
            except ClientError as e:
                if _error_code(e) == "InvalidRange":  # offset at or past the end: nothing to read
                    return
                raise
            async with response["Body"] as body:
                while chunk := await body.read(chunk_size):
                    yield chunk

    async def get_file(self, key: str, path: Path) -> None:
        await write_file_chunks(path, self.get_stream(key))

    async def size(self, key: str) -> int:
        with _errors(key):
            response = await self._client.head_object(Bucket=self._bucket, Key=self._object_key(key))
        return int(response["ContentLength"])

    async def exists(self, key: str) -> bool:
        try:
            await self.size(key)
        except NotFound:
            return False
        return True

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with _errors(prefix):
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix):
                keys.extend(item["Key"][len(self._prefix) :] for item in page.get("Contents", ()))
        return sorted(keys)

    async def abort_stale_writes(self, older_than_seconds: float) -> int:
        # S3 keeps (and bills) the parts of an upload nobody completes or aborts, for good.
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        aborted = 0
        with _errors(self._prefix):
            paginator = self._client.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=self._prefix):
                for upload in page.get("Uploads", ()):
                    if upload["Initiated"] < cutoff:
                        await self._abort(upload["Key"], upload["UploadId"])
                        aborted += 1
        return aborted

    def _object_key(self, key: str) -> str:
        if not key:
            raise ValueError("blob key must not be empty")
        return self._prefix + key


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def _errors(key: str) -> Iterator[None]:
    """Map S3 failures to domain errors: a missing object is NotFound, an unreachable endpoint Unavailable."""
    try:
        yield
    except ClientError as e:
        if _error_code(e) in _MISSING_CODES:
            raise NotFound(f"blob {key!r} not found") from e
        if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) in (500, 502, 503, 504):
            raise Unavailable("blob store is unavailable") from e
        raise
    except (BotoConnectionError, HTTPClientError, aiohttp.ClientError) as e:
        # BotoConnectionError covers EndpointConnectionError and connect timeouts; HTTPClientError covers
        # ConnectionClosedError, read timeouts and a connection lost while streaming a body.
        raise Unavailable("blob store is unavailable") from e
