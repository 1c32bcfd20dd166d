"""Lease managers: in-process locks and PostgreSQL advisory locks (real server), behaving the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tt_server.errors import FailedPrecondition, Unavailable
from tt_server.storage.leases import LeaseManager, LocalLeaseManager, PostgresLeaseManager, lease_key


@pytest.fixture(params=["local", "postgres"])
async def leases(request: pytest.FixtureRequest) -> AsyncIterator[LeaseManager]:
    if request.param == "local":
        yield LocalLeaseManager()
    else:
        yield PostgresLeaseManager(request.getfixturevalue("postgres_dsn"))


async def test_one_holder_and_waiters_in_turn(leases: LeaseManager) -> None:
    first = await leases.acquire("model-a", wait=False)
    with pytest.raises(FailedPrecondition):
        await leases.acquire("model-a", wait=False)
    other = await leases.acquire("model-b", wait=False)  # names are independent
    waiter = asyncio.ensure_future(leases.acquire("model-a", wait=True))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await first.release()
    await first.release()  # idempotent
    second = await asyncio.wait_for(waiter, 5)
    await second.check()
    await second.release()
    await other.release()
    again = await leases.acquire("model-a", wait=False)
    await again.release()


async def test_a_cancelled_waiter_never_holds_the_lease(leases: LeaseManager) -> None:
    holder = await leases.acquire("model-c", wait=False)
    waiter = asyncio.ensure_future(leases.acquire("model-c", wait=True))
    await asyncio.sleep(0.2)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await holder.release()
    lease = await asyncio.wait_for(leases.acquire("model-c", wait=False), 5)
    await lease.release()


async def test_postgres_lease_lost_with_its_connection(postgres_dsn: str) -> None:
    leases = PostgresLeaseManager(postgres_dsn)
    lease = await leases.acquire("model-d", wait=False)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        # Another process kills the lease's session: the lock goes with it, and check() says so.
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1::bigint::oid",
            lease_key("model-d") & 0xFFFFFFFF,
        )
    finally:
        await conn.close()
    with pytest.raises(Unavailable):
        await lease.check()
    await lease.release()
    taken = await leases.acquire("model-d", wait=False)
    await taken.release()


def test_lease_keys_are_stable_signed_64_bit() -> None:
    # Pinned: replicas of different releases must derive the same key, or two of them could train one model.
    assert lease_key("m") == 6223516721589882772 != lease_key("n")
    assert all(-(2**63) <= lease_key(name) < 2**63 for name in ("a", "model-b", "x" * 63))
