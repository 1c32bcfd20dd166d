"""Reading parts of a job input: ranged reads on both blob stores, Parquet through ``RangedFile`` (only the
needed column chunks are fetched, row group by row group), and the one first-line reader."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tt_server.errors import NotFound
from tt_server.jobs.attempt import _row_group_batches
from tt_server.jobs.columns import MAX_FIRST_LINE_BYTES
from tt_server.jobs.inputs import RangedFile, read_first_line
from tt_server.storage.blobs import BlobStore
from tt_server.storage.local import LocalBlobStore
from tt_server.storage.s3 import S3BlobStore


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "local":
        local = LocalBlobStore(tmp_path / "blobs")
        await local.open()
        yield local
        return
    s3 = S3BlobStore(f"inputs-{uuid.uuid4().hex[:10]}", request.getfixturevalue("s3_endpoint"), "us-east-1")
    await s3.open()
    yield s3
    await s3.close()


async def put(store: BlobStore, key: str, data: bytes) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    await store.put_stream(key, chunks())


async def test_get_range(store: BlobStore) -> None:
    data = bytes(range(256)) * 40
    await put(store, "inputs/r.bin", data)
    assert await store.get_range("inputs/r.bin", 0, 10) == data[:10]
    assert await store.get_range("inputs/r.bin", 1000, 3000) == data[1000:4000]
    assert await store.get_range("inputs/r.bin", len(data) - 5, 100) == data[-5:]  # fewer at the end
    assert await store.get_range("inputs/r.bin", len(data), 10) == b""
    assert await store.get_range("inputs/r.bin", 7, 0) == b""
    with pytest.raises(NotFound):
        await store.get_range("inputs/missing.bin", 0, 10)
    with pytest.raises(ValueError):
        await store.get_range("inputs/r.bin", -1, 10)


def _parquet(rows: int, row_group: int) -> tuple[bytes, pa.Table]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((rows, 8)).astype(np.float32)
    noise = rng.standard_normal((rows, 32)).tobytes()
    table = pa.table(
        {
            "features": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8),
            "payload": pa.array(noise[i * 256 : (i + 1) * 256] for i in range(rows)),
        }
    )
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=row_group, compression="none")
    return out.getvalue(), table


async def test_parquet_is_read_by_ranged_reads_of_the_needed_column_chunks(store: BlobStore) -> None:
    data, table = _parquet(rows=4000, row_group=500)
    await put(store, "inputs/t.parquet", data)
    source = RangedFile(store, "inputs/t.parquet", len(data), asyncio.get_running_loop())

    def read() -> tuple[list[int], pa.Table, int]:
        parquet = pq.ParquetFile(source)
        assert parquet.metadata.num_row_groups == 8
        footer_requests = source.requests
        batches = list(parquet.iter_batches(batch_size=300, columns=["features"]))
        return [len(b) for b in batches], pa.Table.from_batches(batches), footer_requests

    sizes, read_back, footer_requests = await asyncio.to_thread(read)
    assert sum(sizes) == 4000 and max(sizes) <= 300
    assert read_back.column("features").equals(table.column("features"))
    # The footer in a read or two, then one read per row group of the one column asked for; the "payload"
    # column (4x the bytes of "features") is never fetched.
    assert footer_requests <= 2
    assert source.requests - footer_requests == 8
    payload_bytes = sum(
        pq.ParquetFile(io.BytesIO(data)).metadata.row_group(i).column(1).total_compressed_size for i in range(8)
    )
    assert source.bytes_read < len(data) - payload_bytes + 64 * 1024


async def test_the_next_row_group_is_read_ahead(store: BlobStore) -> None:
    data, table = _parquet(rows=4000, row_group=500)
    await put(store, "inputs/t.parquet", data)
    source = RangedFile(store, "inputs/t.parquet", len(data), asyncio.get_running_loop())

    def read() -> pa.Table:
        return pa.Table.from_batches(list(_row_group_batches(pq.ParquetFile(source), source, 300, ["features"])))

    read_back = await asyncio.to_thread(read)
    assert read_back.column("features").equals(table.column("features"))
    assert source.read_ahead_hits == 7  # every row group but the first was on its way before it was needed
    assert source.requests - source.read_ahead_hits <= 3  # the footer and the first row group


async def test_ranged_file_refuses_the_event_loop(store: BlobStore) -> None:
    await put(store, "inputs/x.bin", b"abc")
    source = RangedFile(store, "inputs/x.bin", 3, asyncio.get_running_loop())
    with pytest.raises(RuntimeError, match="event loop"):
        source.read(3)
    assert await asyncio.to_thread(source.read, 3) == b"abc"


async def test_a_store_error_reaches_the_reader_as_itself(store: BlobStore) -> None:
    source = RangedFile(store, "inputs/gone.parquet", 1000, asyncio.get_running_loop())
    with pytest.raises(NotFound):
        await asyncio.to_thread(pq.ParquetFile, source)


async def test_read_first_line(store: BlobStore) -> None:
    await put(store, "inputs/a.csv", b"a,b,c\n1,2,3\n" * 20_000)
    first = await read_first_line(store, "inputs/a.csv")
    assert first.startswith(b"a,b,c\n") and len(first) <= 64 * 1024
    long_line = b"x" * (MAX_FIRST_LINE_BYTES + 200_000) + b"\n"
    await put(store, "inputs/long.csv", long_line)
    first = await read_first_line(store, "inputs/long.csv")
    assert MAX_FIRST_LINE_BYTES < len(first) < len(long_line)  # enough to tell the line is too long, no more
    await put(store, "inputs/short.csv", b"a,b")
    assert await read_first_line(store, "inputs/short.csv") == b"a,b"
