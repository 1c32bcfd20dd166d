"""A version whose load failed is not loaded again on every call: within its backoff, calls fail at once with the
load's error and when the next attempt may start; the backoff doubles per consecutive failure up to
``model_load_retry_max_seconds``; a successful load or a registry event for the model ends it.

Loads fail through the loader-factory seam (``ScriptedLoader``); the backoff runs on a ``FakeClock`` the tests
advance, so nothing here waits for it."""

from __future__ import annotations

import asyncio
import functools
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.clock import FakeClock
from tests.runtime.helpers import LIMITS, publish
from tt_server.errors import FailedPrecondition, Unavailable
from tt_server.runtime.loader import Loader
from tt_server.runtime.manager import ModelManager
from tt_server.runtime.servable import Servable
from tt_server.storage.local import LocalBlobStore
from tt_server.storage.sqlite import SqliteMetadataStore
from tt_server.types import EventKind, ModelRef, ModelVersion, RegistryEvent

MakeManager = Callable[..., ModelManager]
GUARD_SECONDS = 30.0  # only against a hang


class Script:
    """What the loads do: raise the queued errors in order, then load for real. ``gate``, when set up, holds each
    load (after ``entered`` is set) until it is opened."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.loads = 0
        self.entered = threading.Event()
        self.gate: threading.Event | None = None


class ScriptedLoader(Loader):
    def __init__(self, version: ModelVersion, artifact: Path, work_dir: Path, *, script: Script) -> None:
        super().__init__(version, artifact, work_dir, LIMITS)
        self._script = script

    def load(self) -> Servable:
        self._script.loads += 1
        self._script.entered.set()
        if self._script.gate is not None:
            self._script.gate.wait(GUARD_SECONDS)
        if self._script.errors:
            raise self._script.errors.pop(0)
        return super().load()


def scripted(script: Script) -> functools.partial[ScriptedLoader]:
    return functools.partial(ScriptedLoader, script=script)


def counted(metric: str, name: str) -> float:
    return REGISTRY.get_sample_value(metric, {"model": name, "version": "1"}) or 0.0


async def refused(manager: ModelManager, ref: ModelRef, error: type[Exception]) -> str:
    """The message of the error ``manager.get(ref)`` raises (of type ``error``)."""
    with pytest.raises(error) as raised:
        await manager.get(ref)
    return str(raised.value)


async def test_calls_within_the_backoff_fail_at_once_with_the_load_s_error(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    name = f"broken-{uuid.uuid4().hex[:8]}"
    await publish(metadata, blobs, constant_models[1], name=name)
    script = Script(FailedPrecondition("the artifact is broken"))
    clock = FakeClock()
    manager = make_manager(factory=scripted(script), clock=clock)
    ref = ModelRef(name, version=1)

    assert await refused(manager, ref, FailedPrecondition) == "the artifact is broken"
    for _ in range(3):  # no download, no load: the same error and when the next attempt may start
        message = await refused(manager, ref, FailedPrecondition)
        assert message == "the artifact is broken; next load attempt in 1 s"
    clock.advance(0.5)
    assert await refused(manager, ref, FailedPrecondition) == "the artifact is broken; next load attempt in 1 s"
    assert manager.loads_started == 1 and script.loads == 1
    assert counted("tt_model_load_failures_total", name) == 1
    assert counted("tt_model_load_backoff_refusals_total", name) == 4

    clock.advance(0.5)  # the backoff has passed: the calls arriving now share one new load
    handles = await asyncio.gather(*[manager.get(ref) for _ in range(20)])
    assert len({id(h) for h in handles}) == 1
    assert manager.loads_started == 2 and manager.loaded_versions == [(name, 1)]
    assert counted("tt_model_load_failures_total", name) == 1


async def test_the_backoff_doubles_per_failure_up_to_the_limit(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    name = f"flaky-{uuid.uuid4().hex[:8]}"
    await publish(metadata, blobs, constant_models[1], name=name)
    script = Script(*[Unavailable("the blob store is unavailable") for _ in range(5)])
    clock = FakeClock()
    manager = make_manager(factory=scripted(script), clock=clock, model_load_retry_max_seconds=5)
    ref = ModelRef(name, version=1)
    for attempt, backoff in enumerate((1, 2, 4, 5, 5), start=1):
        assert await refused(manager, ref, Unavailable) == "the blob store is unavailable"
        assert manager.loads_started == attempt
        message = f"the blob store is unavailable; next load attempt in {backoff} s"
        assert await refused(manager, ref, Unavailable) == message
        clock.advance(backoff - 0.5)
        assert await refused(manager, ref, Unavailable) == "the blob store is unavailable; next load attempt in 1 s"
        clock.advance(0.5)
    assert (await manager.get(ref)).version == 1
    assert manager.loads_started == 6
    assert counted("tt_model_load_failures_total", name) == 5
    assert counted("tt_model_load_backoff_refusals_total", name) == 10


async def test_a_registry_event_for_the_model_ends_its_backoffs(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    name = f"fixed-{uuid.uuid4().hex[:8]}"
    await publish(metadata, blobs, constant_models[1], name=name)
    script = Script(FailedPrecondition("broken"), FailedPrecondition("broken"))
    clock = FakeClock()
    manager = make_manager(factory=scripted(script), clock=clock)
    ref = ModelRef(name, version=1)
    await refused(manager, ref, FailedPrecondition)
    assert "next load attempt" in await refused(manager, ref, FailedPrecondition)

    v2 = await publish(metadata, blobs, constant_models[2], name=name)  # e.g. the fix, uploaded
    await manager.handle_event(RegistryEvent(EventKind.VERSION_CREATED, name, version=v2.version))
    assert await refused(manager, ref, FailedPrecondition) == "broken"  # tried again at once
    assert manager.loads_started == 2
    await manager.handle_event(RegistryEvent(EventKind.LABEL_MOVED, name, version=1, label="prod"))
    assert (await manager.get(ref)).version == 1
    assert manager.loads_started == 3


async def test_a_load_that_fails_while_an_event_arrives_leaves_no_backoff(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    """The event may be the fix (or a deletion): the failure that raced it must not keep the next call out."""
    name = f"racing-{uuid.uuid4().hex[:8]}"
    await publish(metadata, blobs, constant_models[1], name=name)
    script = Script(FailedPrecondition("broken"))
    script.gate = threading.Event()
    manager = make_manager(factory=scripted(script), clock=FakeClock())
    ref = ModelRef(name, version=1)
    loading = asyncio.ensure_future(manager.get(ref))
    try:
        assert await asyncio.to_thread(script.entered.wait, GUARD_SECONDS)
        await manager.handle_event(RegistryEvent(EventKind.POLICY_CHANGED, name))
    finally:
        script.gate.set()
    with pytest.raises(FailedPrecondition):
        await loading
    assert (await manager.get(ref)).version == 1
    assert manager.loads_started == 2


async def test_an_unexpected_load_error_is_refused_as_an_unexpected_error(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    """Not a domain error: clients see INTERNAL with a generic message, for the load and for the refusals."""
    name = f"bug-{uuid.uuid4().hex[:8]}"
    await publish(metadata, blobs, constant_models[1], name=name)
    manager = make_manager(factory=scripted(Script(ValueError("a bug"))), clock=FakeClock())
    ref = ModelRef(name, version=1)
    assert await refused(manager, ref, ValueError) == "a bug"
    message = await refused(manager, ref, RuntimeError)
    assert message == "the last load failed unexpectedly (ValueError); next load attempt in 1 s"
    assert manager.loads_started == 1


async def test_a_limit_of_zero_tries_again_on_every_call(
    make_manager: MakeManager,
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    constant_models: dict[int, Path],
) -> None:
    name = f"eager-{uuid.uuid4().hex[:8]}"
    await publish(metadata, blobs, constant_models[1], name=name)
    script = Script(*[FailedPrecondition("broken") for _ in range(3)])
    manager = make_manager(factory=scripted(script), clock=FakeClock(), model_load_retry_max_seconds=0)
    for _ in range(3):
        assert await refused(manager, ModelRef(name, version=1), FailedPrecondition) == "broken"
    assert manager.loads_started == 3
