"""BlobStore behaviour, run against every backend (a local folder, moto's S3 server) by the same tests."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiobotocore.session import get_session

from tests.services import S3_PART_SIZE, BlobBackend
from tt_server.errors import NotFound, Unavailable
from tt_server.storage.local import LocalBlobStore
from tt_server.storage.s3 import S3BlobStore

BlobStore = LocalBlobStore | S3BlobStore
MiB = 1 << 20


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def failing_after(data: bytes, size: int) -> AsyncIterator[bytes]:
    async for chunk in chunked(data, size):
        yield chunk
    raise RuntimeError("source broke")


async def read_all(store: BlobStore, key: str, offset: int = 0, chunk_size: int = MiB) -> bytes:
    return b"".join([chunk async for chunk in store.get_stream(key, offset, chunk_size)])


async def leftovers(backend: BlobBackend) -> list[str]:
    """What a failed write may have left behind: temporary files, or unfinished multipart uploads."""
    if backend.root is not None:
        return [str(path.relative_to(backend.root)) for path in backend.root.rglob("*") if path.is_file()]
    async with get_session().create_client("s3", endpoint_url=backend.s3_endpoint, region_name="us-east-1") as s3:
        response = await s3.list_multipart_uploads(Bucket=backend.bucket)
        return [upload["Key"] for upload in response.get("Uploads", [])]


async def test_round_trip_of_a_multipart_sized_stream(blob_store: BlobStore, tmp_path: Path) -> None:
    data = payload(12 * MiB + 12345)  # over two parts of S3_PART_SIZE, and a short last one
    assert len(data) > 2 * S3_PART_SIZE
    # Odd chunk sizes, so chunks straddle part boundaries.
    info = await blob_store.put_stream("models/m/big", chunked(data, 700_001))
    assert (info.key, info.size, info.sha256) == ("models/m/big", len(data), hashlib.sha256(data).hexdigest())

    assert await blob_store.size("models/m/big") == len(data)
    assert await blob_store.exists("models/m/big")
    chunks = [chunk async for chunk in blob_store.get_stream("models/m/big", chunk_size=MiB)]
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= MiB

    await blob_store.get_file("models/m/big", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == data


async def test_small_and_empty_objects(blob_store: BlobStore, tmp_path: Path) -> None:
    info = await blob_store.put_stream("small", chunked(b"hello world", 4))
    assert (info.size, info.sha256) == (11, hashlib.sha256(b"hello world").hexdigest())
    assert await read_all(blob_store, "small") == b"hello world"

    empty = await blob_store.put_stream("empty", chunked(b"", 1))
    assert (empty.size, empty.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert await blob_store.size("empty") == 0
    assert await read_all(blob_store, "empty") == b""

    (tmp_path / "source").write_bytes(b"from a file")
    from_file = await blob_store.put_file("from-file", tmp_path / "source")
    assert from_file.sha256 == hashlib.sha256(b"from a file").hexdigest()
    assert await read_all(blob_store, "from-file") == b"from a file"


async def test_overwrite_replaces_the_whole_object(blob_store: BlobStore) -> None:
    await blob_store.put_stream("k", chunked(payload(100_000, seed=1), 10_000))
    await blob_store.put_stream("k", chunked(b"short", 5))
    assert await read_all(blob_store, "k") == b"short"


async def test_reads_from_an_offset(blob_store: BlobStore) -> None:
    data = payload(6 * MiB + 7)  # multipart on S3
    await blob_store.put_stream("k", chunked(data, MiB))
    for offset in (1, 5 * MiB + 3, len(data) - 1):
        assert await read_all(blob_store, "k", offset, chunk_size=100_000) == data[offset:]
    assert await read_all(blob_store, "k", len(data)) == b""
    assert await read_all(blob_store, "k", len(data) + 10) == b""
    with pytest.raises(ValueError):
        await read_all(blob_store, "k", -1)


async def test_missing_key_is_not_found(blob_store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="nope"):
        await read_all(blob_store, "nope")
    with pytest.raises(NotFound):
        await read_all(blob_store, "nope", offset=10)
    with pytest.raises(NotFound):
        await blob_store.size("nope")
    assert not await blob_store.exists("nope")
    with pytest.raises(NotFound):
        await blob_store.get_file("nope", tmp_path / "download")
    assert not (tmp_path / "download").exists()


async def test_delete_is_idempotent(blob_store: BlobStore) -> None:
    await blob_store.put_stream("models/m/k", chunked(b"data", 4))
    await blob_store.delete("models/m/k")
    assert not await blob_store.exists("models/m/k")
    await blob_store.delete("models/m/k")
    await blob_store.delete("never/written")


async def test_list_keys_by_prefix(blob_store: BlobStore) -> None:
    keys = ["a/b/1", "a/b/2", "a/c", "ab", "b"]
    for key in keys:
        await blob_store.put_stream(key, chunked(key.encode(), 10))
    assert await blob_store.list_keys("") == keys
    assert await blob_store.list_keys("a/") == ["a/b/1", "a/b/2", "a/c"]
    assert await blob_store.list_keys("a") == ["a/b/1", "a/b/2", "a/c", "ab"]
    assert await blob_store.list_keys("a/b/") == ["a/b/1", "a/b/2"]
    assert await blob_store.list_keys("zzz/") == []


@pytest.mark.parametrize("size", [1000, 7 * MiB], ids=["before-first-part", "after-first-part"])
async def test_failed_source_leaves_nothing(blob_store: BlobStore, blob_backend: BlobBackend, size: int) -> None:
    with pytest.raises(RuntimeError, match="source broke"):
        await blob_store.put_stream("models/m/broken", failing_after(payload(size), MiB))
    assert not await blob_store.exists("models/m/broken")
    assert await blob_store.list_keys("") == []
    assert await leftovers(blob_backend) == []


async def test_cancelled_upload_leaves_nothing(blob_store: BlobStore, blob_backend: BlobBackend) -> None:
    sent_a_part = asyncio.Event()

    async def stalls_after_a_part() -> AsyncIterator[bytes]:
        async for chunk in chunked(payload(S3_PART_SIZE + MiB), MiB):
            yield chunk
        sent_a_part.set()
        await asyncio.Event().wait()  # a client that stops sending
        yield b""  # pragma: no cover

    upload = asyncio.create_task(blob_store.put_stream("models/m/stalled", stalls_after_a_part()))
    await asyncio.wait_for(sent_a_part.wait(), timeout=30)
    assert await leftovers(blob_backend) != []  # a part went up (S3), or a temporary file is open (local)
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    assert not await blob_store.exists("models/m/stalled")
    assert await leftovers(blob_backend) == []


# --- backend specifics --------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b", "a/./b", "a/.hidden", "a\\b", "trailing/"])
async def test_local_rejects_keys_that_escape_or_collide(tmp_path: Path, key: str) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    await store.open()
    with pytest.raises(ValueError):
        await store.put_stream(key, chunked(b"x", 1))
    with pytest.raises(ValueError):
        await store.exists(key)
    assert list((tmp_path / "blobs").iterdir()) == []


async def test_local_write_is_durable_and_atomic(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    await store.open()
    await store.put_stream("models/m/k", chunked(b"data", 2))
    # Only the final file remains: no temporary files next to it.
    assert sorted(os.listdir(tmp_path / "blobs" / "models" / "m")) == ["k"]


async def test_local_delete_removes_the_folders_it_empties(tmp_path: Path) -> None:
    """As S3 has no folders: a folder goes with its last key (a refused job's ``jobs/<id>/``), the root stays."""
    root = tmp_path / "blobs"
    store = LocalBlobStore(root)
    await store.open()

    def tree() -> list[str]:
        return sorted(path.relative_to(root).as_posix() for path in root.rglob("*"))

    for key in ("jobs/a/input.csv", "jobs/b/input.csv", "jobs/b/attempt-1/results.csv"):
        await store.put_stream(key, chunked(b"x", 1))
    await store.delete("jobs/b/attempt-1/results.csv")
    assert tree() == ["jobs", "jobs/a", "jobs/a/input.csv", "jobs/b", "jobs/b/input.csv"]
    await store.delete("jobs/a/input.csv")
    await store.delete("jobs/b/input.csv")
    assert tree() == [] and root.is_dir()
    # A failed write leaves its folders; deleting its key (as the blob outbox's discard does) removes them.
    with pytest.raises(RuntimeError, match="source broke"):
        await store.put_stream("jobs/c/input.csv", failing_after(b"xy", 1))
    await store.delete("jobs/c/input.csv")
    assert tree() == []
    await store.put_stream("jobs/c/input.csv", chunked(b"again", 2))  # the folders are made again
    assert await read_all(store, "jobs/c/input.csv") == b"again"


async def test_open_is_idempotent(blob_store: BlobStore, make_blob_store: Callable[[], BlobStore]) -> None:
    await blob_store.put_stream("k", chunked(b"x", 1))
    again = make_blob_store()
    await again.open()  # the bucket exists already (or, locally, the folder)
    assert await read_all(again, "k") == b"x"


async def test_s3_unreachable_is_unavailable(s3_endpoint: str) -> None:  # s3_endpoint: for the credentials
    # Port 1 on loopback: nothing listens there, so connections are refused at once.
    store = S3BlobStore(bucket="b", endpoint_url="http://127.0.0.1:1", region="us-east-1", part_size=S3_PART_SIZE)
    with pytest.raises(Unavailable):
        await store.open()
