"""The model manager keeps serving the last known label/newest resolution while the metadata store is
unavailable, answers at once (no request waits for the store) and refreshes when the store is back.

The manager's resolution TTL runs on a ``FakeClock`` that the tests advance: nothing here waits a TTL or times
the wall clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from tests.clock import FakeClock
from tests.ops.helpers import constant_artifacts
from tests.runtime.helpers import publish
from tests.serving import server_settings
from tt_server.errors import NotFound, Unavailable
from tt_server.runtime.loader import loader_factory
from tt_server.runtime.manager import ModelManager
from tt_server.storage.local import LocalBlobStore
from tt_server.storage.sqlite import SqliteMetadataStore
from tt_server.types import EventKind, ModelRef, RegistryEvent

TTL = 0.2
ROW = {"features": np.ones((1, 4), np.float32)}
GUARD_SECONDS = 30.0  # only against a hang: what a test waits for is meant to happen at once


class FlakyMetadata:
    """The metadata store, whose version look-ups can be made to fail (``down``) or to hang (``hang``) until
    ``timed_out`` is set, as when the store's command timeout fires."""

    def __init__(self, store: SqliteMetadataStore) -> None:
        self._store = store
        self.down = False
        self.hang = False
        self.timed_out = asyncio.Event()
        self.queries = 0

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._store, name)
        if not name.startswith("get_"):
            return attr

        async def flaky(*args: object) -> object:
            self.queries += 1
            if self.hang:
                await self.timed_out.wait()
                raise Unavailable("metadata database did not answer in time")
            if self.down:
                raise Unavailable("metadata database is unavailable")
            return await attr(*args)

        return flaky


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteMetadataStore, LocalBlobStore]]:
    metadata = SqliteMetadataStore(tmp_path / "metadata.db", token_secret=b"stale")
    blobs = LocalBlobStore(tmp_path / "blobs")
    await metadata.open()
    await blobs.open()
    yield metadata, blobs
    await blobs.close()
    await metadata.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def manager(
    stores: tuple[SqliteMetadataStore, LocalBlobStore], tmp_path: Path, clock: FakeClock
) -> AsyncIterator[tuple[ModelManager, FlakyMetadata]]:
    metadata, blobs = stores
    flaky = FlakyMetadata(metadata)
    settings = server_settings(tmp_path, model_resolution_ttl_seconds=TTL)
    made = ModelManager(  # type: ignore[arg-type]
        flaky, blobs, tmp_path / "cache", settings, clock=clock, loader_factory=loader_factory(settings)
    )
    yield made, flaky
    flaky.timed_out.set()
    await made.close()


async def until(check: Callable[[], Awaitable[bool]], clock: FakeClock, message: str) -> None:
    """Poll ``check`` while the clock moves on a quarter TTL per poll (up to 10 TTLs, as the tests allow)."""
    for _ in range(40):
        if await check():
            return
        clock.advance(TTL / 4)
        await asyncio.sleep(0.01)  # the background refresh a request started runs meanwhile
    raise AssertionError(message)


async def answer(manager: ModelManager, ref: ModelRef) -> tuple[int, float]:
    handle = await manager.get(ref)
    out = await handle.batcher.submit(ROW, 1)
    return handle.version, float(out["score"][0, 0])


async def test_stale_resolutions_serve_while_the_store_is_down(
    manager: tuple[ModelManager, FlakyMetadata],
    stores: tuple[SqliteMetadataStore, LocalBlobStore],
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    mgr, flaky = manager
    metadata, blobs = stores
    one, two = constant_artifacts(tmp_path / "models", 1.0, 2.0)
    await publish(metadata, blobs, one, labels=("prod",))
    prod, newest = ModelRef("m", label="prod"), ModelRef("m")
    assert await answer(mgr, prod) == (1, 1.0)
    assert await answer(mgr, newest) == (1, 1.0)

    flaky.down = True
    clock.advance(TTL * 1.5)  # both resolutions expired
    for _ in range(5):
        assert await answer(mgr, prod) == (1, 1.0)
        assert await answer(mgr, newest) == (1, 1.0)
        clock.advance(TTL / 2)
    # A ref never resolved before has nothing to fall back on.
    with pytest.raises(Unavailable):
        await mgr.get(ModelRef("m", label="canary"))

    # While stale, a request never waits for the store: here the store hangs (until the test lets it time out),
    # and requests still answer, a TTL and more apart, while the queries they started are still hanging.
    flaky.hang = True
    clock.advance(TTL * 1.5)
    queries = flaky.queries
    for _ in range(20):
        assert await asyncio.wait_for(answer(mgr, prod), GUARD_SECONDS) == (1, 1.0)
        clock.advance(TTL / 2)
    assert flaky.queries > queries  # the store was asked (and hangs) behind the requests
    assert not flaky.timed_out.is_set()

    # The store is back, with changes made meanwhile (no event reached this manager): they show within a few TTLs.
    flaky.hang = flaky.down = False
    flaky.timed_out.set()
    await publish(metadata, blobs, two)
    await metadata.set_label("m", "prod", 2)

    async def recovered() -> bool:
        return (await answer(mgr, prod), await answer(mgr, newest)) == ((2, 2.0), (2, 2.0))

    await until(recovered, clock, "the resolutions did not recover")


async def test_a_label_deleted_during_the_outage_is_not_served_after_it(
    manager: tuple[ModelManager, FlakyMetadata],
    stores: tuple[SqliteMetadataStore, LocalBlobStore],
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    mgr, flaky = manager
    metadata, blobs = stores
    (one,) = constant_artifacts(tmp_path / "models", 1.0)
    await publish(metadata, blobs, one, labels=("prod",))
    prod = ModelRef("m", label="prod")
    assert await answer(mgr, prod) == (1, 1.0)
    flaky.down = True
    clock.advance(TTL * 1.5)
    assert await answer(mgr, prod) == (1, 1.0)  # stale
    await metadata.delete_label("m", "prod")
    flaky.down = False

    async def gone() -> bool:
        try:
            await answer(mgr, prod)
        except NotFound:
            return True
        return False

    await until(gone, clock, "a deleted label was still served")


async def test_an_event_drops_a_stale_resolution(
    manager: tuple[ModelManager, FlakyMetadata],
    stores: tuple[SqliteMetadataStore, LocalBlobStore],
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """A registry event says the cached answer is wrong: it is not served even while the store is down."""
    mgr, flaky = manager
    metadata, blobs = stores
    (one,) = constant_artifacts(tmp_path / "models", 1.0)
    await publish(metadata, blobs, one, labels=("prod",))
    prod = ModelRef("m", label="prod")
    assert await answer(mgr, prod) == (1, 1.0)
    flaky.down = True
    clock.advance(TTL * 1.5)
    assert await answer(mgr, prod) == (1, 1.0)
    await mgr.handle_event(RegistryEvent(EventKind.LABEL_MOVED, "m", 2, "prod"))
    with pytest.raises(Unavailable):
        await mgr.get(prod)
    assert await answer(mgr, ModelRef("m", version=1)) == (1, 1.0)  # explicit versions need no store at all
