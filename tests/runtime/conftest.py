"""Fixtures for the runtime tests: real embedded stores (SQLite + blob folder) and model managers on them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from pathlib import Path

import pytest

from tests.runtime.helpers import constant_model
from tt_server.config import Settings
from tt_server.runtime.loader import LoaderFactory, loader_factory
from tt_server.runtime.manager import ModelManager
from tt_server.storage.local import LocalBlobStore
from tt_server.storage.sqlite import SqliteMetadataStore


@pytest.fixture(scope="module")
def constant_models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """``.keras`` files answering 1.0, 2.0 ... 4.0: one per version a test publishes."""
    out = tmp_path_factory.mktemp("constant-models")
    paths = {}
    for value in range(1, 5):
        paths[value] = out / f"constant-{value}.keras"
        constant_model(float(value)).save(paths[value])
    return paths


@pytest.fixture
async def metadata(tmp_path: Path) -> AsyncIterator[SqliteMetadataStore]:
    store = SqliteMetadataStore(tmp_path / "metadata.db", token_secret=b"runtime-tests")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def blobs(tmp_path: Path) -> AsyncIterator[LocalBlobStore]:
    store = LocalBlobStore(tmp_path / "blobs")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def make_manager(
    metadata: SqliteMetadataStore, blobs: LocalBlobStore, tmp_path: Path
) -> AsyncIterator[Callable[..., ModelManager]]:
    """Make managers over this test's stores (settings overridable); all are closed afterwards."""
    made: list[ModelManager] = []

    def make(
        executor: Executor | None = None,
        factory: LoaderFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        **settings: object,
    ) -> ModelManager:
        """``factory``: the loader factory (default: the server's); ``clock``: what backoffs and TTLs run on."""
        # No gc.freeze() in the test process unless a test asks for it (test_the_collector_is_settled...).
        values: dict = {"data_dir": tmp_path, "log_json": False, "gc_freeze": False, **settings}
        s = Settings(**values)
        manager = ModelManager(
            metadata, blobs, tmp_path / "model-cache", s, executor, clock, loader_factory=factory or loader_factory(s)
        )
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.close()
