"""BlobOutbox: write a blob that only a later database commit makes permanent.

Model artifacts, job inputs and job results are all written the same way, so that no row ever points at a
missing blob and no blob outlives its row, whatever crashes or cancellations happen in between:

1. **reserve** -- record the key in the blob GC table, due after a delay (``add_blob_gc``);
2. **put** -- write the blob under that key (the caller's ``put_file`` / ``put_stream``);
3. **claim** -- the caller's commit transaction (``create_version``, ``create_job``, ``commit_job``) removes
   the GC entry together with inserting the row that owns the blob;
4. **discard** -- when the commit did not happen: delete the blob and its GC entry now. A failed discard is
   only logged: the GC entry stays and the sweeper (``due_blob_gc``) deletes the blob later.

Use it as ``reserve`` + ``discard`` when the failure policy is the caller's own, or as a context manager that
discards on the way out unless the write was claimed::

    async with outbox.stage(key) as staged:
        await blobs.put_file(key, path)
        await metadata.create_version(...)  # removes the GC entry in the same transaction
        staged.claimed()

Leaving the block without ``claimed()`` (an error, or cancellation: the discard is shielded) discards, except
after ``Unavailable`` when ``keep_when_unavailable`` (the default): a discard would only wait out the same
timeouts again, and the GC entry lets the sweeper delete the blob once the dependency is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from tt_server.errors import Unavailable
from tt_server.storage.blobs import BlobStore

log = logging.getLogger(__name__)


class BlobGcTable(Protocol):
    """The blob GC table's writes (both ``MetadataStore`` and ``JobStore`` have them: one table)."""

    async def add_blob_gc(self, blob_key: str, not_before_us: int) -> None: ...

    async def remove_blob_gc(self, blob_key: str) -> None: ...


class Staged:
    """A reserved blob inside ``BlobOutbox.stage``; call ``claimed()`` once the owning row is committed."""

    __slots__ = ("_claimed", "key")

    def __init__(self, key: str) -> None:
        self.key = key
        self._claimed = False

    def claimed(self) -> None:
        self._claimed = True

    @property
    def is_claimed(self) -> bool:
        return self._claimed


class BlobOutbox:
    """Reserve / discard blobs through the GC table (see the module docstring for the sequence).

    ``delay_us``: how long a reserved blob may stay unclaimed before the sweeper may delete it; it must outlast
    the slowest write. ``what`` names the blobs in the log line of a deferred clean-up (e.g. "job input").
    """

    def __init__(self, blobs: BlobStore, gc: BlobGcTable, *, delay_us: int, what: str = "blob") -> None:
        self._blobs = blobs
        self._gc = gc
        self._delay_us = delay_us
        self._what = what

    async def reserve(self, key: str) -> None:
        """Record ``key`` in the GC table, due after the delay; call before the first byte is written."""
        await self._gc.add_blob_gc(key, time.time_ns() // 1000 + self._delay_us)

    async def discard(self, key: str) -> None:
        """Delete the blob and its GC entry; never raises (a failure leaves the entry to the sweeper)."""
        try:
            await self._blobs.delete(key)
            await self._gc.remove_blob_gc(key)
        except Exception:
            log.warning("%s cleanup deferred to the sweeper", self._what, extra={"blob_key": key}, exc_info=True)

    @asynccontextmanager
    async def stage(self, key: str, *, keep_when_unavailable: bool = True) -> AsyncIterator[Staged]:
        """Reserve ``key``; on leaving, discard it unless ``claimed()`` was called (module docstring)."""
        await self.reserve(key)
        staged = Staged(key)
        try:
            yield staged
        except Unavailable:
            if not staged.is_claimed and not keep_when_unavailable:
                await asyncio.shield(self.discard(key))
            raise
        except BaseException:
            if not staged.is_claimed:
                # Shielded: a cancelled write must still clean up after itself.
                await asyncio.shield(self.discard(key))
            raise
        else:
            if not staged.is_claimed:
                await asyncio.shield(self.discard(key))
