"""Writes a killed process never finished (S3 multipart uploads, local temporary files) are aborted by the sweep
once older than its bound, and fresh ones (an upload in progress elsewhere) are left alone."""

from __future__ import annotations

import os
import time

from aiobotocore.session import get_session

from tests.services import S3_PART_SIZE, BlobBackend
from tt_server.storage.local import LocalBlobStore
from tt_server.storage.s3 import S3BlobStore

BlobStore = LocalBlobStore | S3BlobStore


async def _leave_unfinished_write(backend: BlobBackend, key: str) -> None:
    """What a worker killed in the middle of writing ``key`` leaves behind."""
    if backend.root is not None:
        folder = backend.root / os.path.dirname(key)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f".{os.path.basename(key)}.0123456789abcdef.tmp").write_bytes(b"x" * 1000)
        return
    async with get_session().create_client("s3", endpoint_url=backend.s3_endpoint, region_name="us-east-1") as s3:
        created = await s3.create_multipart_upload(Bucket=backend.bucket, Key=backend.prefix + key)
        await s3.upload_part(
            Bucket=backend.bucket,
            Key=backend.prefix + key,
            UploadId=created["UploadId"],
            PartNumber=1,
            Body=b"x" * S3_PART_SIZE,
        )


async def _unfinished(backend: BlobBackend) -> list[str]:
    if backend.root is not None:
        return sorted(p.name for p in backend.root.rglob("*.tmp"))
    async with get_session().create_client("s3", endpoint_url=backend.s3_endpoint, region_name="us-east-1") as s3:
        response = await s3.list_multipart_uploads(Bucket=backend.bucket)
        return sorted(upload["Key"] for upload in response.get("Uploads", []))


async def test_stale_writes_are_aborted(blob_store: BlobStore, blob_backend: BlobBackend) -> None:
    await blob_store.put_stream("jobs/j1/attempt-2/results.csv", _one(b"done"))
    await _leave_unfinished_write(blob_backend, "jobs/j1/attempt-1/results.csv")
    assert await _unfinished(blob_backend) != []
    if blob_backend.root is not None:
        # Too young: could be an upload in progress. (moto reports one fixed "Initiated" date for every upload,
        # 2010-11-10, so on S3 only real S3 or MinIO can show this half.)
        assert await blob_store.abort_stale_writes(3600) == 0
        assert await _unfinished(blob_backend) != []
        for path in blob_backend.root.rglob("*.tmp"):
            os.utime(path, (time.time() - 7200,) * 2)
    assert await blob_store.abort_stale_writes(3600) == 1
    assert await _unfinished(blob_backend) == []
    assert await blob_store.list_keys("jobs/") == ["jobs/j1/attempt-2/results.csv"]  # finished objects stay


async def _one(data: bytes):  # type: ignore[no-untyped-def]
    yield data
