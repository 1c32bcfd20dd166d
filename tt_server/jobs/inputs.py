"""Reading parts of a job's input without reading all of it: its first line (the CSV header or first JSON
object, checked at CreateJob and read again by the attempt) and, for Parquet, a seekable file over ranged reads.

Why ranged reads for Parquet: a Parquet file is read footer first, then one column chunk per needed column
and row group. ``RangedFile`` turns each of pyarrow's reads into one ranged read of the blob store (an S3
ranged GET, or a seek and read of the local file), so the worker fetches only the columns it needs, one row
group at a time: memory holds about one row group whatever the file size, and no scratch copy is written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import threading
import time
from typing import TYPE_CHECKING

from tt_server.jobs.columns import MAX_FIRST_LINE_BYTES
from tt_server.storage.blobs import BlobStore

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

FIRST_LINE_CHUNK_BYTES = 64 * 1024
RANGE_READ_TIMEOUT_SECONDS = 300.0  # one ranged read; a store that hangs this long fails the attempt


async def read_first_line(blobs: BlobStore, key: str) -> bytes:
    """The input's first bytes, through its first line break: at most ``MAX_FIRST_LINE_BYTES`` and one read
    more, so that a caller can tell a first line over the limit (``columns.first_record``) from a short file."""
    prefix = bytearray()
    stream = blobs.get_stream(key, chunk_size=FIRST_LINE_CHUNK_BYTES)
    async with contextlib.aclosing(stream):  # type: ignore[type-var]  # blob streams are async generators
        async for chunk in stream:
            prefix += chunk
            if b"\n" in chunk or len(prefix) > MAX_FIRST_LINE_BYTES:
                break
    return bytes(prefix)


class RangedFile(io.RawIOBase):
    """A read-only, seekable file over ``blobs.get_range`` for pyarrow, used from worker threads only: each
    ``read`` runs one ranged read on the event loop ``loop`` and waits for it, unless ``prefetch`` started it
    already. Counts its reads (``requests``, ``bytes_read``, ``seconds``) so the attempt can tell reading from
    parsing."""

    def __init__(self, blobs: BlobStore, key: str, size: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._blobs = blobs
        self._key = key
        self._size = size
        self._loop = loop
        self._position = 0
        self._lock = threading.Lock()  # pyarrow may read from more than one thread
        # Ranges asked for ahead (``prefetch``): (offset, length) -> the read in flight, taken by ``read``.
        self._ahead: dict[tuple[int, int], concurrent.futures.Future[bytes]] = {}
        self.requests = 0
        self.read_ahead_hits = 0  # reads served by a ``prefetch``
        self.bytes_read = 0
        self.seconds = 0.0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def size(self) -> int:
        return self._size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence == io.SEEK_END:
            offset += self._size
        elif whence != io.SEEK_SET:
            raise ValueError(f"invalid whence {whence}")
        if offset < 0:
            raise OSError("negative seek position")
        self._position = offset
        return offset

    def read(self, size: int | None = -1) -> bytes:
        with self._lock:
            end = self._size if size is None or size < 0 else min(self._size, self._position + size)
            if end <= self._position:
                return b""
            data = self._fetch(self._position, end - self._position)
            self._position += len(data)
            return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Start reading ``ranges`` (offset, length) now, for a later ``read`` of exactly one of them; reads
        asked for before and not taken are dropped, so at most one set of ranges is held."""
        with self._lock:
            for future in self._ahead.values():
                future.cancel()
            self._ahead = {
                (offset, length): asyncio.run_coroutine_threadsafe(
                    self._blobs.get_range(self._key, offset, length), self._loop
                )
                for offset, length in ranges
                if length > 0
            }

    def _fetch(self, offset: int, length: int) -> bytes:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("RangedFile blocks: read it from a worker thread, not the event loop")
        began = time.perf_counter()
        future = self._ahead.pop((offset, length), None)
        if future is None:
            future = asyncio.run_coroutine_threadsafe(self._blobs.get_range(self._key, offset, length), self._loop)
        else:
            self.read_ahead_hits += 1
        try:
            data = future.result(RANGE_READ_TIMEOUT_SECONDS)
        except TimeoutError:
            future.cancel()
            raise
        self.requests += 1
        self.bytes_read += len(data)
        self.seconds += time.perf_counter() - began
        return data
