"""The model manager on real embedded stores: resolution, single loads, LRU unloading, registry events and
hot swaps under load."""

from __future__ import annotations

import asyncio
import functools
import gc
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.clock import FakeClock
from tests.runtime.helpers import LIMITS, publish
from tt_server.errors import FailedPrecondition, NotFound
from tt_server.events import LocalEventBus
from tt_server.runtime import manager as manager_module
from tt_server.runtime import memory
from tt_server.runtime.loader import Loader, loader_factory
from tt_server.runtime.manager import LOAD_RETRY_FIRST_SECONDS, ModelManager, parse_model_ref
from tt_server.storage.local import LocalBlobStore
from tt_server.storage.sqlite import SqliteMetadataStore
from tt_server.types import EventKind, ModelRef, RegistryEvent

MakeManager = Callable[..., ModelManager]
ROW = {"features": np.ones((1, 4), np.float32)}


async def answer(manager: ModelManager, ref: ModelRef) -> tuple[int, float]:
    """The version that served ``ref`` and what it answered (a constant model answers its value)."""
    handle = await manager.get(ref)
    out = await handle.batcher.submit(ROW, 1)
    return handle.version, float(out["score"][0, 0])


class CountingMetadata:
    """The metadata store, counting the version look-ups the manager makes."""

    def __init__(self, store: SqliteMetadataStore) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._store, name)
        if name.startswith("get_"):

            async def counted(*args: object) -> object:
                self.calls[name] += 1
                return await attr(*args)

            return counted
        return attr


def test_parse_model_ref() -> None:
    assert parse_model_ref("fraud") == ModelRef("fraud")
    assert parse_model_ref("fraud:12") == ModelRef("fraud", version=12)
    assert parse_model_ref(" fraud@prod ") == ModelRef("fraud", label="prod")
    for bad in ("", "fraud:", "fraud:x", "fraud@", ":3"):
        with pytest.raises(ValueError):
            parse_model_ref(bad)


async def test_a_thousand_concurrent_first_requests_share_one_load(
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    tmp_path: Path,
    constant_models: dict[int, Path],
) -> None:
    await publish(metadata, blobs, constant_models[1])
    counting = CountingMetadata(metadata)
    settings = _settings(tmp_path)
    manager = ModelManager(counting, blobs, tmp_path / "cache", settings, loader_factory=loader_factory(settings))  # type: ignore[arg-type]
    try:
        handles = await asyncio.gather(*[manager.get(ModelRef("m")) for _ in range(1000)])
        assert manager.loads_started == 1
        assert len({id(h) for h in handles}) == 1
        assert counting.calls == {"get_served_version": 1}
        assert await answer(manager, ModelRef("m")) == (1, 1.0)
        assert not any((tmp_path / "cache").iterdir())  # downloads are removed once loaded
    finally:
        await manager.close()


async def test_a_failed_load_fails_every_waiter_and_a_request_after_its_backoff_retries(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    await publish(metadata, blobs, constant_models[1])
    failures = [FailedPrecondition("the artifact is broken")]

    class FlakyLoader(Loader):
        def load(self):  # type: ignore[no-untyped-def]
            if failures:
                raise failures.pop()
            return super().load()

    clock = FakeClock()
    manager = make_manager(factory=functools.partial(FlakyLoader, limits=LIMITS), clock=clock)
    results = await asyncio.gather(*[manager.get(ModelRef("m", version=1)) for _ in range(50)], return_exceptions=True)
    assert all(isinstance(r, FailedPrecondition) for r in results)
    assert manager.loads_started == 1 and manager.loaded_versions == []
    clock.advance(LOAD_RETRY_FIRST_SECONDS)  # the backoff after one failure (tests/runtime/test_load_backoff.py)
    assert await answer(manager, ModelRef("m", version=1)) == (1, 1.0)
    assert manager.loads_started == 2


async def test_versions_labels_and_newest(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    await publish(metadata, blobs, constant_models[1], labels=("prod",))
    await publish(metadata, blobs, constant_models[2])
    manager = make_manager()
    assert await answer(manager, ModelRef("m")) == (2, 2.0)
    assert await answer(manager, ModelRef("m", label="prod")) == (1, 1.0)
    assert await manager.get(ModelRef("m", version=1)) is await manager.get(ModelRef("m", label="prod"))
    assert (await manager.current_version(ModelRef("m", label="prod"))).version == 1
    for missing in (ModelRef("nope"), ModelRef("m", version=9), ModelRef("m", label="staging")):
        with pytest.raises(NotFound):
            await manager.get(missing)
    assert manager.loads_started == 2


async def test_least_recently_used_versions_are_unloaded_beyond_the_count(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    for value in (1, 2, 3):
        await publish(metadata, blobs, constant_models[value])
    manager = make_manager(model_cache_max_versions=2)
    await manager.get(ModelRef("m", version=1))
    await manager.get(ModelRef("m", version=2))
    await manager.get(ModelRef("m", version=1))  # now 2 is the least recently used
    await manager.get(ModelRef("m", version=3))
    assert manager.loaded_versions == [("m", 1), ("m", 3)]
    assert await answer(manager, ModelRef("m", version=2)) == (2, 2.0)  # loads again
    assert manager.loads_started == 4
    assert manager.loaded_versions == [("m", 3), ("m", 2)]


async def test_versions_are_unloaded_beyond_the_byte_budget(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    for value in (1, 2):
        await publish(metadata, blobs, constant_models[value])
    manager = make_manager(model_cache_max_bytes=30)  # one constant model holds 5 float32 = 20 bytes
    await manager.get(ModelRef("m", version=1))
    assert manager.loaded_bytes == 20
    await manager.get(ModelRef("m", version=2))
    assert manager.loaded_versions == [("m", 2)] and manager.loaded_bytes == 20


async def test_the_collector_is_settled_after_loads_and_unloads(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a load created is frozen (out of full collections); an unloaded model is still freed."""
    monkeypatch.setattr(memory, "SETTLE_DELAY_SECONDS", 0.05)
    for value in (1, 2):
        await publish(metadata, blobs, constant_models[value])
    manager = make_manager(model_cache_max_versions=1, gc_freeze=True)
    try:
        gc.unfreeze()
        # The loaded Keras model: reference cycles (layers <-> model), so only the collector can free it.
        first = weakref.ref((await manager.get(ModelRef("m", version=1))).servable._owner)
        await asyncio.sleep(0.5)
        assert gc.get_freeze_count() > 0
        await manager.get(ModelRef("m", version=2))  # unloads version 1 (count budget)
        await asyncio.sleep(0.5)
        assert first() is None  # collected although its objects had been frozen
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


async def test_requests_in_flight_finish_on_an_unloaded_version(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    for value in (1, 2):
        await publish(metadata, blobs, constant_models[value])
    inference = ThreadPoolExecutor(1)
    manager = make_manager(executor=inference, model_cache_max_versions=1)
    old = await manager.get(ModelRef("m", version=1))
    busy = threading.Event()
    inference.submit(busy.wait, 10)  # the inference thread is busy: the next request waits in the queue
    pending = asyncio.create_task(old.batcher.submit(ROW, 1))
    await asyncio.sleep(0.01)
    await manager.get(ModelRef("m", version=2))  # loads on the loader thread and unloads version 1
    assert manager.loaded_versions == [("m", 2)]
    busy.set()
    assert float((await pending)["score"][0, 0]) == 1.0
    assert float((await old.batcher.submit(ROW, 1))["score"][0, 0]) == 1.0  # a kept handle still works
    inference.shutdown()


async def test_registry_events_invalidate_resolutions_and_unload(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    await publish(metadata, blobs, constant_models[1], labels=("prod",))
    events = LocalEventBus()
    manager = make_manager(model_resolution_ttl_seconds=3600)
    await manager.start(events)
    assert (await manager.get(ModelRef("m"))).version == 1

    v2 = await publish(metadata, blobs, constant_models[2])
    assert (await manager.get(ModelRef("m"))).version == 1  # cached: nobody said anything yet
    await events.publish(RegistryEvent(EventKind.VERSION_CREATED, "m", version=v2.version))
    assert (await manager.get(ModelRef("m"))).version == 2

    assert (await manager.get(ModelRef("m", label="prod"))).version == 1
    await metadata.set_label("m", "prod", 2)
    assert (await manager.get(ModelRef("m", label="prod"))).version == 1  # cached
    await events.publish(RegistryEvent(EventKind.LABEL_MOVED, "m", version=2, label="prod"))
    assert (await manager.get(ModelRef("m", label="prod"))).version == 2

    await metadata.delete_label("m", "prod")
    await events.publish(RegistryEvent(EventKind.LABEL_DELETED, "m", label="prod"))
    with pytest.raises(NotFound):
        await manager.get(ModelRef("m", label="prod"))

    await manager.get(ModelRef("m", version=1))
    await metadata.delete_version("m", 1, force=True)
    await events.publish(RegistryEvent(EventKind.VERSION_DELETED, "m", version=1))
    assert ("m", 1) not in manager.loaded_versions
    with pytest.raises(NotFound):
        await manager.get(ModelRef("m", version=1))

    await metadata.delete_model("m")
    await events.publish(RegistryEvent(EventKind.MODEL_DELETED, "m"))
    assert manager.loaded_versions == []
    with pytest.raises(NotFound):
        await manager.get(ModelRef("m"))


async def test_resolutions_are_reused_for_their_ttl(
    metadata: SqliteMetadataStore, blobs: LocalBlobStore, tmp_path: Path, constant_models: dict[int, Path]
) -> None:
    await publish(metadata, blobs, constant_models[1], labels=("prod",))
    for ttl, queries in ((3600.0, 1), (0.0, 3)):
        counting = CountingMetadata(metadata)
        settings = _settings(tmp_path, model_resolution_ttl_seconds=ttl)
        manager = ModelManager(counting, blobs, tmp_path / "cache", settings, loader_factory=loader_factory(settings))  # type: ignore[arg-type]
        try:
            for _ in range(3):
                await manager.get(ModelRef("m", label="prod"))
            assert counting.calls["get_labelled_version"] == queries
        finally:
            await manager.close()


async def test_a_moved_label_in_use_loads_its_new_version_in_the_background(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    await publish(metadata, blobs, constant_models[1], labels=("prod",))
    await publish(metadata, blobs, constant_models[2])
    events = LocalEventBus()
    manager = make_manager()
    await manager.start(events)
    await manager.get(ModelRef("m", label="prod"))
    await metadata.set_label("m", "prod", 2)
    await events.publish(RegistryEvent(EventKind.LABEL_MOVED, "m", version=2, label="prod"))
    for _ in range(500):
        if ("m", 2) in manager.loaded_versions:
            break
        await asyncio.sleep(0.01)
    assert manager.loaded_versions == [("m", 1), ("m", 2)]


async def test_hot_swap_under_load_drops_no_request(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    await publish(metadata, blobs, constant_models[1], labels=("prod",))
    for value in (2, 3):
        await publish(metadata, blobs, constant_models[value])
    events = LocalEventBus()
    manager = make_manager(model_cache_max_versions=1)  # every swap also unloads the old version
    await manager.start(events)
    seen: list[list[tuple[int, float]]] = [[] for _ in range(8)]
    stop = asyncio.Event()

    async def client(log: list[tuple[int, float]]) -> None:
        while not stop.is_set():
            log.append(await answer(manager, ModelRef("m", label="prod")))

    clients = [asyncio.create_task(client(log)) for log in seen]
    for target in (2, 3):
        await asyncio.sleep(0.1)
        await metadata.set_label("m", "prod", target)
        await events.publish(RegistryEvent(EventKind.LABEL_MOVED, "m", version=target, label="prod"))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*clients)  # any failed request would raise here

    for log in seen:
        assert all(float(version) == value for version, value in log)  # each answer from the version named
        versions = [version for version, _ in log]
        assert versions == sorted(versions)  # a client never goes back to an older version
        assert versions[0] == 1 and versions[-1] == 3
    assert sum(len(log) for log in seen) > 100


async def test_preload_at_start(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    await publish(metadata, blobs, constant_models[1], labels=("prod",))
    await publish(metadata, blobs, constant_models[2])
    manager = make_manager(preload_models=["m@prod", "m", "missing:1"])
    await manager.start()  # the missing model is logged and skipped
    assert manager.loaded_versions == [("m", 1), ("m", 2)]
    # A malformed reference is refused when the settings are read, before anything starts.
    with pytest.raises(ValueError, match='is not "name", "name:3" or "name@label"'):
        make_manager(preload_models=["m:latest"])


def _settings(tmp_path: Path, **values: object) -> manager_module.Settings:
    return manager_module.Settings(data_dir=tmp_path, log_json=False, **values)  # type: ignore[arg-type]
