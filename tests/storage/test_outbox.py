"""BlobOutbox: a staged blob survives only when claimed; otherwise it is discarded now or left to the sweeper."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tt_server.config import Settings
from tt_server.errors import Unavailable
from tt_server.jobs.objects import JobBlobs
from tt_server.registry.sweeper import Sweeper
from tt_server.storage.local import LocalBlobStore
from tt_server.storage.outbox import BlobOutbox
from tt_server.storage.sql import SqlMetadataStore

DELAY_US = 3_600_000_000


def after_delay() -> int:
    return time.time_ns() // 1000 + 2 * DELAY_US


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_claimed_blob_stays_and_leaves_the_gc_table(tmp_path: Path, metadata_store: SqlMetadataStore) -> None:
    blobs = LocalBlobStore(tmp_path)
    outbox = BlobOutbox(blobs, metadata_store, delay_us=DELAY_US)
    async with outbox.stage("k/claimed") as staged:
        await blobs.put_stream("k/claimed", chunks(b"abc"))
        assert await metadata_store.due_blob_gc(after_delay(), 10) == ["k/claimed"]
        await metadata_store.remove_blob_gc("k/claimed")  # what the owning row's commit does
        staged.claimed()
    assert await blobs.exists("k/claimed")
    assert await metadata_store.due_blob_gc(after_delay(), 10) == []


@pytest.mark.parametrize("ending", ["error", "cancel", "unclaimed"])
async def test_an_unclaimed_blob_is_discarded(tmp_path: Path, metadata_store: SqlMetadataStore, ending: str) -> None:
    blobs = LocalBlobStore(tmp_path)
    outbox = BlobOutbox(blobs, metadata_store, delay_us=DELAY_US)
    written = asyncio.Event()

    async def write() -> None:
        async with outbox.stage("k/lost"):
            await blobs.put_stream("k/lost", chunks(b"abc"))
            if ending == "error":
                raise ValueError("the commit failed")
            if ending == "cancel":
                written.set()
                await asyncio.sleep(3600)

    task = asyncio.create_task(write())
    if ending == "cancel":
        await written.wait()
        task.cancel()
    results = await asyncio.gather(task, return_exceptions=True)
    expected = {"error": ValueError, "cancel": asyncio.CancelledError, "unclaimed": type(None)}[ending]
    assert isinstance(results[0], expected)
    assert not await blobs.exists("k/lost")
    assert await metadata_store.due_blob_gc(after_delay(), 10) == []


async def test_an_outage_leaves_the_blob_to_the_sweeper(tmp_path: Path, metadata_store: SqlMetadataStore) -> None:
    blobs = LocalBlobStore(tmp_path)
    outbox = BlobOutbox(blobs, metadata_store, delay_us=DELAY_US)
    with pytest.raises(Unavailable):
        async with outbox.stage("k/kept"):
            await blobs.put_stream("k/kept", chunks(b"abc"))
            raise Unavailable("the database is down")
    assert await blobs.exists("k/kept")
    assert await metadata_store.due_blob_gc(after_delay(), 10) == ["k/kept"]
    # Not due before the delay: a slow write is never swept under its writer.
    assert await metadata_store.due_blob_gc(time.time_ns() // 1000, 10) == []

    with pytest.raises(Unavailable):
        async with outbox.stage("k/dropped", keep_when_unavailable=False):
            await blobs.put_stream("k/dropped", chunks(b"abc"))
            raise Unavailable("the database is down")
    assert not await blobs.exists("k/dropped")
    assert await metadata_store.due_blob_gc(after_delay(), 10) == ["k/kept"]


async def test_a_failed_discard_is_logged_not_raised(
    tmp_path: Path, metadata_store: SqlMetadataStore, caplog: pytest.LogCaptureFixture
) -> None:
    blobs = LocalBlobStore(tmp_path)
    outbox = BlobOutbox(blobs, metadata_store, delay_us=DELAY_US, what="job input")
    await outbox.reserve("k/orphan")
    await metadata_store.close()  # the GC table cannot be written now
    caplog.set_level(logging.WARNING, logger="tt_server.storage.outbox")
    await outbox.discard("k/orphan")
    assert [r.getMessage() for r in caplog.records] == ["job input cleanup deferred to the sweeper"]


async def test_a_garbage_blob_out_of_reach_is_tried_again_later_without_holding_up_the_rest(
    tmp_path: Path, metadata_store: SqlMetadataStore
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    await blobs.put_stream("k/garbage", chunks(b"abc"))
    # A dead job attempt's result in a caller's bucket, reserved by a worker set up for object storage, first in
    # line; this process is not set up for it (no TT_JOB_S3_ALLOWED_PREFIXES).
    unreachable = "s3://lake/out/j1/attempt-1/results.csv"
    await metadata_store.add_blob_gc(unreachable, 0)
    await metadata_store.add_blob_gc("k/garbage", 1)
    sweeper = Sweeper(metadata_store, JobBlobs(blobs), Settings(data_dir=tmp_path))
    assert await sweeper.collect_garbage() == 2
    assert not await blobs.exists("k/garbage")
    assert await metadata_store.due_blob_gc(time.time_ns() // 1000, 10) == []
    assert await metadata_store.due_blob_gc(after_delay(), 10) == [unreachable]  # kept, for a later try
