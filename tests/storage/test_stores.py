"""open_stores: the one composition root of stores for the server and the worker."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.serving import leftover_threads, server_settings
from tt_server.errors import Unavailable
from tt_server.events import LocalEventBus
from tt_server.storage.factory import Stores, open_stores
from tt_server.storage.leases import LocalLeaseManager
from tt_server.storage.local import LocalBlobStore
from tt_server.storage.local_broker import LocalBroker

UNREACHABLE_AMQP = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1: refused at once


async def test_embedded_stores_share_one_database_and_close_on_exit(tmp_path: Path) -> None:
    before = {t.ident for t in threading.enumerate()}
    async with open_stores(server_settings(tmp_path)) as stores:
        assert isinstance(stores, Stores)
        assert isinstance(stores.blobs, LocalBlobStore)
        assert isinstance(stores.events, LocalEventBus)
        assert isinstance(stores.broker, LocalBroker)
        assert isinstance(stores.leases, LocalLeaseManager)
        # The job store is the metadata store's sibling over the same database: one GC table.
        await stores.jobs.add_blob_gc("jobs/x/input.csv", 0)
        assert await stores.metadata.due_blob_gc(1, 10) == ["jobs/x/input.csv"]
        await stores.broker.publish("job-1")
        await stores.metadata.ping()
    with pytest.raises(Unavailable):
        await stores.metadata.ping()
    with pytest.raises(Unavailable):
        await stores.jobs.get_job("0" * 32)
    with pytest.raises(Unavailable):
        await stores.broker.publish("job-2")
    assert not await leftover_threads(before)


async def test_a_failure_halfway_closes_what_was_opened(tmp_path: Path) -> None:
    """The job queue cannot be reached: the database, blob store and event bus opened before it are closed
    again (SQLite's thread would otherwise keep the process alive) and the error propagates."""
    before = {t.ident for t in threading.enumerate()}
    events = LocalEventBus()
    with pytest.raises(Unavailable, match="job queue"):
        async with open_stores(server_settings(tmp_path, amqp_url=UNREACHABLE_AMQP), events=events):
            pytest.fail("the stores opened without their job queue")
    assert (tmp_path / "tensortrigger.db").exists()  # it had got as far as opening the database
    assert not await leftover_threads(before)


async def test_an_unreachable_event_bus_fails_before_the_job_queue(tmp_path: Path) -> None:
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(Unavailable, match="event broker"):
        async with open_stores(server_settings(tmp_path, amqp_url=UNREACHABLE_AMQP)):
            pytest.fail("the stores opened without their event bus")
    assert not await leftover_threads(before)
