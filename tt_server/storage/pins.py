"""VersionPins: records in the metadata store that a version is in use, so retention on any replica keeps it.

A pin is a row with an expiry that a background task pushes forward while the pin is held; a replica that dies
without unpinning leaves rows that lapse by themselves after ``ttl_seconds``. Pinning is best effort: when the
store is unavailable the holder goes on (serving must not fail because of retention bookkeeping) and retention,
which needs the same store, cannot run either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from tt_server.errors import Unavailable
from tt_server.storage.metadata import MetadataStore

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 120.0


class VersionPins:
    def __init__(self, metadata: MetadataStore, ttl_seconds: float = DEFAULT_TTL_SECONDS) -> None:
        self._metadata = metadata
        self._ttl_us = int(ttl_seconds * 1_000_000)
        self._refresh_seconds = ttl_seconds / 3
        self._held: set[str] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def hold(self, model_name: str, version: int) -> AsyncIterator[None]:
        """Pin ``version`` of ``model_name`` for the duration of the block."""
        holder = await self.pin(model_name, version)
        try:
            yield
        finally:
            await asyncio.shield(self.unpin(holder))

    async def pin(self, model_name: str, version: int, holder: str | None = None) -> str:
        """Pin a version until ``unpin`` with the returned holder id; with ``holder``, move that pin to it."""
        holder = holder or uuid.uuid4().hex
        try:
            await self._metadata.pin_version(holder, model_name, version, self._expiry())
        except Unavailable:
            log.warning("version not pinned: metadata store unavailable", extra={"model": model_name})
        self._held.add(holder)
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh_forever(), name="tt-version-pins")
        return holder

    def pin_soon(self, model_name: str, version: int) -> str:
        """``pin`` without waiting for the store, for hot paths (a stream must not wait out an outage)."""
        holder = uuid.uuid4().hex
        self._spawn(self.pin(model_name, version, holder))
        return holder

    def unpin_soon(self, holder: str) -> None:
        """``unpin`` in the background, after any ``pin_soon`` of the same holder."""
        pending = list(self._background)

        async def unpin_after() -> None:
            await asyncio.gather(*pending, return_exceptions=True)
            await self.unpin(holder)

        self._spawn(unpin_after())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def unpin(self, holder: str) -> None:
        self._held.discard(holder)
        if not self._held and self._refresher is not None:
            self._refresher.cancel()  # nothing left to refresh; the next pin starts a new one
            self._refresher = None
        with contextlib.suppress(Unavailable):  # the row lapses by itself
            await self._metadata.unpin(holder)

    async def close(self) -> None:
        # Unfinished pin bookkeeping is dropped: the rows lapse by themselves.
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    def _expiry(self) -> int:
        return time.time_ns() // 1000 + self._ttl_us

    async def _refresh_forever(self) -> None:
        while self._held:
            await asyncio.sleep(self._refresh_seconds)
            try:
                await self._metadata.refresh_pins(sorted(self._held), self._expiry())
            except Unavailable:
                log.warning("version pins not refreshed: metadata store unavailable")
