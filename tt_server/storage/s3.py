"""S3BlobStore: the production BlobStore on any S3-compatible service, through aiobotocore.

Writes stream: data is cut into ``part_size`` parts and sent as a multipart upload, ``upload_concurrency``
parts at a time, so memory holds a few parts whatever the object's size; an object smaller than one part goes
in a single PutObject. Every request carries its SHA-256 (``ChecksumSHA256``), which S3 verifies before
accepting the bytes; the whole object's digest is returned to the caller (the registry records it with the
version). A failed or cancelled upload is aborted, so S3 keeps no half-written parts. Credentials come from
the usual AWS chain (environment, config files, instance role).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
from collections import deque
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

from tt_server.errors import NotFound, PermissionDenied, ResourceExhausted, Unavailable
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
_DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled"})


class S3BlobStore:
    """Blobs as objects under ``prefix`` in ``bucket``; the bucket is created on ``open()`` if missing."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        prefix: str = "",
        part_size: int = 8 * MiB,
        upload_concurrency: int = 4,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
        create_bucket: bool = True,
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
        self._upload_concurrency = max(1, upload_concurrency)
        self._config = AioConfig(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._stack = AsyncExitStack()
        self._s3: S3Client | None = None
        self._create_bucket = create_bucket  # False: a bucket someone else owns (the model repository)
        self._external = False  # a view of a bucket the caller named (S3Objects): S3's 403 is the caller's

    # --- lifecycle ----------------------------------------------------------------------------------------
    async def open(self) -> None:
        await self._open_client()
        try:
            if self._create_bucket:
                await self._ensure_bucket()
        except BaseException:
            await self.close()
            raise

    async def _open_client(self) -> None:
        client_context = get_session().create_client(
            "s3", endpoint_url=self._endpoint_url, region_name=self._region, config=self._config
        )
        self._s3 = await self._stack.enter_async_context(client_context)
        # No "Expect: 100-continue" on uploads: aiohttp waits for the 100 with no timeout at all, so an endpoint
        # that accepts the connection but never answers (a partition, a hung proxy) would hang the upload for
        # good. Without it the body is sent at once and the read timeout bounds the wait for the answer.
        self._s3.meta.events.unregister("before-call.s3", add_expect_header)

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
        # Parts being sent, in order: up to ``upload_concurrency`` at once, so the next bytes keep arriving while
        # earlier parts travel (one part at a time left the sender idle for a whole round trip per part).
        sending: deque[asyncio.Task[CompletedPartTypeDef]] = deque()
        try:
            with _errors(key, self._external):
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
                        with memoryview(pending) as view:
                            part = bytes(view[: self._part_size])  # the one copy a part needs
                        del pending[: self._part_size]
                        if len(sending) >= self._upload_concurrency:
                            parts.append(await sending.popleft())
                        number = len(parts) + len(sending) + 1
                        sending.append(asyncio.create_task(self._upload_part(object_key, upload_id, number, part)))
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
                    number = len(parts) + len(sending) + 1
                    sending.append(
                        asyncio.create_task(self._upload_part(object_key, upload_id, number, bytes(pending)))
                    )
                while sending:
                    parts.append(await sending.popleft())
                await self._client.complete_multipart_upload(
                    Bucket=self._bucket, Key=object_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
                return info
        except BaseException:
            for task in sending:
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)
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
        with _errors(key, self._external):
            await self._client.delete_object(Bucket=self._bucket, Key=self._object_key(key))

    # --- reads --------------------------------------------------------------------------------------------
    async def get_stream(self, key: str, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        if offset < 0:
            raise ValueError("offset must not be negative")
        # No Range header from 0: S3 answers "bytes=0-" on an empty object with 416 instead of no bytes.
        ranged: dict[str, Any] = {"Range": f"bytes={offset}-"} if offset else {}
        with _errors(key, self._external):
            try:
                response = await self._client.get_object(Bucket=self._bucket, Key=self._object_key(key), **ranged)
            except ClientError as e:
                if _error_code(e) == "InvalidRange":  # offset at or past the end: nothing to read
                    return
                raise
            async with response["Body"] as body:
                while chunk := await body.read(chunk_size):
                    yield chunk

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        if length == 0:
            return b""
        with _errors(key, self._external):
            try:
                response = await self._client.get_object(
                    Bucket=self._bucket, Key=self._object_key(key), Range=f"bytes={offset}-{offset + length - 1}"
                )
            except ClientError as e:
                if _error_code(e) == "InvalidRange":  # offset at or past the end: nothing to read
                    return b""
                raise
            async with response["Body"] as body:
                return bytes(await body.read())

    async def get_file(self, key: str, path: Path) -> None:
        await write_file_chunks(path, self.get_stream(key))

    async def size(self, key: str) -> int:
        with _errors(key, self._external):
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
        with _errors(prefix, self._external):
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix):
                keys.extend(item["Key"][len(self._prefix) :] for item in page.get("Contents", ()))
        return sorted(keys)

    async def list_objects(self, prefix: str) -> list[tuple[str, int, str]]:
        """(key, size, ETag) of every object under ``prefix``, in key order."""
        found: list[tuple[str, int, str]] = []
        with _errors(prefix):
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix):
                found.extend(
                    (item["Key"][len(self._prefix) :], int(item["Size"]), str(item.get("ETag", "")))
                    for item in page.get("Contents", ())
                )
        return sorted(found)

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

    async def abort_writes(self, key: str) -> int:
        """Abort every unfinished multipart upload to exactly ``key`` (none to a longer key it is a prefix of),
        whatever its age; returns how many. For a key whose writer is known to be dead: its GC entry fell due."""
        object_key = self._object_key(key)
        aborted = 0
        with _errors(key, self._external):
            paginator = self._client.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=object_key):
                for upload in page.get("Uploads", ()):
                    if upload["Key"] != object_key:
                        continue
                    try:
                        await self._client.abort_multipart_upload(
                            Bucket=self._bucket, Key=object_key, UploadId=upload["UploadId"]
                        )
                    except ClientError as e:
                        if _error_code(e) != "NoSuchUpload":  # gone meanwhile (another sweeper): as good as done
                            raise
                        continue
                    aborted += 1
        return aborted

    def _object_key(self, key: str) -> str:
        if not key:
            raise ValueError("blob key must not be empty")
        return self._prefix + key


class S3Objects:
    """Objects in any bucket, named by the caller (job inputs and results under ``s3://`` URIs), on one client
    with the blob store's endpoint, region and credentials. Unlike ``S3BlobStore`` it never creates a bucket,
    and S3 refusing access (403) is ``PermissionDenied``: the caller named something the server may not read."""

    def __init__(self, endpoint_url: str | None, region: str, **options: Any) -> None:
        self._client = S3BlobStore("", endpoint_url, region, **options)

    async def open(self) -> None:
        await self._client._open_client()

    async def close(self) -> None:
        await self._client.close()

    def bucket(self, name: str) -> S3BlobStore:
        """A blob store view of bucket ``name`` (keys are the object keys; nothing to open or close)."""
        client = self._client
        view = S3BlobStore(
            name,
            client._endpoint_url,
            client._region,
            part_size=client._part_size,
            upload_concurrency=client._upload_concurrency,
        )
        view._config = self._client._config
        view._s3 = self._client._client
        view._external = True
        return view


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def _errors(key: str, external: bool = False) -> Iterator[None]:
    """Map S3 failures to domain errors: a missing object is NotFound, an unreachable endpoint Unavailable
    (and, for ``external`` buckets, a refusal PermissionDenied)."""
    try:
        yield
    except ClientError as e:
        if _error_code(e) in _MISSING_CODES or (external and _error_code(e) == "NoSuchBucket"):
            raise NotFound(f"{'object' if external else 'blob'} {key!r} not found") from e
        if external and _error_code(e) in _DENIED_CODES:
            raise PermissionDenied(f"the server's credentials may not access {key!r}") from e
        if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) in (500, 502, 503, 504):
            raise Unavailable("blob store is unavailable") from e
        raise
    except (BotoConnectionError, HTTPClientError, aiohttp.ClientError) as e:
        # BotoConnectionError covers EndpointConnectionError and connect timeouts; HTTPClientError covers
        # ConnectionClosedError, read timeouts and a connection lost while streaming a body.
        raise Unavailable("blob store is unavailable") from e
