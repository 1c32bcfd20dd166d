"""Leases: at most one holder per name at a time (one training session per model, across all replicas).

``LeaseManager.acquire(name, wait)`` returns a held ``Lease`` or, when another holder has it and ``wait`` is
false, raises ``FailedPrecondition``. ``Lease.release()`` is idempotent and must run on every exit path.

* ``PostgresLeaseManager`` (production): a session-level ``pg_advisory_lock`` on a connection of its own per
  lease, opened outside the metadata pool so that a long training session never pins a pooled connection.
  The lock key is a stable hash of the name (the same on every replica and Python process). If the
  connection is lost the server drops the lock; ``Lease.check()`` notices, so a holder can stop before it
  writes as if it were still the only one.
* ``LocalLeaseManager`` (embedded, one process): asyncio locks.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Protocol

import asyncpg

from tt_server.errors import FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

# Distinguishes our keys from other advisory locks in the same database (e.g. the migration lock).
_KEY_NAMESPACE = b"tensortrigger.lease:"
# A terminated session may surface as AdminShutdownError, or as InternalClientError when the server's goodbye
# races the next query on the same connection.
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InternalClientError,
)
_CHECK_TIMEOUT_SECONDS = 10.0


class Lease(Protocol):
    name: str

    async def check(self) -> None:
        """Raise ``Unavailable`` when the lease is no longer held (e.g. the database connection was lost)."""

    async def release(self) -> None:
        """Give the lease up; safe to call more than once and after ``check`` failed."""


class LeaseManager(Protocol):
    async def acquire(self, name: str, wait: bool) -> Lease:
        """Take the lease on ``name``; when it is held elsewhere, wait for it or raise ``FailedPrecondition``."""


def lease_key(name: str) -> int:
    """A signed 64-bit advisory lock key for ``name``; stable across processes (unlike ``hash()``)."""
    digest = hashlib.sha256(_KEY_NAMESPACE + name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _held_elsewhere(name: str) -> FailedPrecondition:
    return FailedPrecondition(f"{name!r} is leased by another session; retry later or ask to wait for the lease")


# --- PostgreSQL -------------------------------------------------------------------------------------------
class PostgresLease:
    def __init__(self, name: str, conn: asyncpg.Connection) -> None:
        self.name = name
        self._conn: asyncpg.Connection | None = conn

    async def check(self) -> None:
        conn = self._conn
        try:
            if conn is None or conn.is_closed():
                raise Unavailable(f"the lease on {self.name!r} was lost")
            # Bounded: on a partitioned network the query would otherwise hang the training loop that checks.
            await conn.fetchval("SELECT 1", timeout=_CHECK_TIMEOUT_SECONDS)
        except (*_CONNECTION_ERRORS, TimeoutError) as e:
            raise Unavailable(f"the lease on {self.name!r} was lost: the database connection failed") from e

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close(conn)


class PostgresLeaseManager:
    def __init__(self, dsn: str, connect_timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._timeout = connect_timeout

    async def acquire(self, name: str, wait: bool) -> Lease:
        try:
            conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
        except (
            *_CONNECTION_ERRORS,
            asyncpg.CannotConnectNowError,
            asyncpg.TooManyConnectionsError,
            TimeoutError,  # connect_timeout
        ) as e:
            raise Unavailable("the lease database is unavailable") from e
        try:
            if wait:
                await conn.execute("SELECT pg_advisory_lock($1)", lease_key(name))
            elif not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lease_key(name)):
                raise _held_elsewhere(name)
        except BaseException as e:
            # Including cancellation while waiting: closing the session drops any lock it may have got.
            await asyncio.shield(_close(conn))
            if isinstance(e, _CONNECTION_ERRORS):
                raise Unavailable("the lease database is unavailable") from e
            raise
        return PostgresLease(name, conn)


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await conn.close(timeout=5)
    except Exception:
        # Whatever happened, terminate: a closed socket ends the session and so its advisory locks.
        conn.terminate()


# --- in-process ---------------------------------------------------------------------------------------
class LocalLease:
    def __init__(self, name: str, manager: LocalLeaseManager) -> None:
        self.name = name
        self._manager: LocalLeaseManager | None = manager

    async def check(self) -> None:
        if self._manager is None:
            raise Unavailable(f"the lease on {self.name!r} was released")

    async def release(self) -> None:
        manager, self._manager = self._manager, None
        if manager is not None:
            manager._release(self.name)


class LocalLeaseManager:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}  # holders + waiters, so idle locks can be forgotten

    async def acquire(self, name: str, wait: bool) -> Lease:
        lock = self._locks.setdefault(name, asyncio.Lock())
        if lock.locked() and not wait:
            raise _held_elsewhere(name)
        self._users[name] = self._users.get(name, 0) + 1
        try:
            await lock.acquire()
        except BaseException:
            self._forget(name)
            raise
        return LocalLease(name, self)

    def _release(self, name: str) -> None:
        self._locks[name].release()
        self._forget(name)

    def _forget(self, name: str) -> None:
        self._users[name] -= 1
        if self._users[name] == 0:
            del self._users[name], self._locks[name]
