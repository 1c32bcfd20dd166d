"""Clean-up after the registry: blobs whose GC entry is due, and what killed processes left behind.

Every blob the registry writes is first recorded in the metadata store's blob GC table with a due time; the
commit that makes it a version clears the entry. Whatever was never committed (a crashed or abandoned upload)
or was deleted since (pruned and deleted versions) is found here by its due entry and deleted. The same table
holds job inputs and results, some of them in callers' buckets (``s3://`` keys): the server gives the sweeper
a blob store that reaches those too (``jobs.objects.JobBlobs``), whose delete also aborts an unfinished upload
to the key.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tt_server.config import Settings
from tt_server.errors import FailedPrecondition, PermissionDenied
from tt_server.storage.blobs import BlobStore
from tt_server.storage.metadata import MetadataStore
from tt_server.storage.scratch import sweep_abandoned

log = logging.getLogger(__name__)

RETRY_DELAY_US = 3600 * 1_000_000  # a garbage blob that could not be deleted is tried again after this


def _now_us() -> int:
    return time.time_ns() // 1000


class Sweeper:
    """Deletes due garbage blobs and stale leftovers; the server runs it periodically in the background."""

    def __init__(self, metadata: MetadataStore, blobs: BlobStore, settings: Settings) -> None:
        self._metadata = metadata
        self._blobs = blobs
        self._settings = settings

    async def sweep_leftovers(self) -> tuple[int, int]:
        """Remove what killed processes left: their upload and Train scratch folders, unfinished blob writes."""
        folders = await asyncio.to_thread(
            sweep_abandoned, self._settings.scratch_dir, self._settings.scratch_max_age_seconds
        )
        writes = await self._blobs.abort_stale_writes(self._settings.stale_write_seconds)
        if folders or writes:
            log.info("removed leftovers", extra={"scratch_folders": folders, "unfinished_blob_writes": writes})
        return folders, writes

    async def collect_garbage(self, limit: int = 100) -> int:
        """Delete blobs whose GC entry is due (deleted versions, abandoned uploads, dead job attempts' results);
        returns how many entries it handled."""
        keys = await self._metadata.due_blob_gc(_now_us(), limit)
        for key in keys:
            try:
                await self._blobs.delete(key)
            except (PermissionDenied, FailedPrecondition):
                # A caller's bucket this process may not (or cannot) reach: try again later, and do not hold up
                # the rest of the table meanwhile.
                log.warning("could not delete a garbage blob; will retry", extra={"blob_key": key}, exc_info=True)
                await self._metadata.add_blob_gc(key, _now_us() + RETRY_DELAY_US)
                continue
            await self._metadata.remove_blob_gc(key)
        return len(keys)
