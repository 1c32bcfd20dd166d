"""PostgresBackend: the production SQL database, an asyncpg connection pool (``sqldb.SqlBackend``).

Both SQL stores run over it (``PostgresMetadataStore`` is a metadata store with a backend of its own).

Transactions run at READ COMMITTED (the default); ``sql.py`` explains how row locks on ``models`` make that
enough. Migrations run under a transaction-scoped advisory lock, so replicas starting together take turns.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg

from tt_server.errors import Unavailable
from tt_server.storage.sql import SqlMetadataStore
from tt_server.storage.sqldb import Row, SqlBackend, SqlConnection, SqlDatabase

# Errors meaning "the server cannot be reached or is going away"; retrying later may work. Anything else
# (constraint violations, bad SQL, bad credentials) is a bug or a configuration error and propagates as is.
# OSError covers refused connections and connect timeouts.
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,  # includes ConnectionDoesNotExistError (connection lost mid-query)
    asyncpg.CannotConnectNowError,  # starting up or in recovery
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)

T = TypeVar("T")

# Any fixed number works; it only has to differ from other advisory locks taken in the same database.
_MIGRATION_LOCK_ID = 0x7474_5F6D_6967  # "tt_mig"


class PostgresBackend(SqlBackend):
    dialect = "postgres"
    migration_lock = f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})"

    def __init__(
        self,
        dsn: str,
        pool_size: int,
        connect_timeout: float = 5.0,
        command_timeout: float | None = 30.0,
    ) -> None:
        """``connect_timeout`` bounds opening a connection; ``command_timeout`` bounds every statement (None = no
        bound). Both turn a partitioned network into ``Unavailable`` instead of a call that hangs."""
        super().__init__()
        self._dsn = dsn
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout

    async def _connect(self) -> SqlDatabase:
        try:
            # The pool replaces lost connections by itself (on the next acquire, and in the background for
            # min_size), so the store recovers from an outage without a restart.
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
            )
        except (*_CONNECTION_ERRORS, TimeoutError) as e:
            raise Unavailable("metadata database is unavailable") from e
        return _PostgresDatabase(pool)


class PostgresMetadataStore(SqlMetadataStore):
    """A metadata store over a PostgreSQL backend of its own (tools and tests; the servers share one backend
    between both SQL stores: ``factory.open_stores``)."""

    def __init__(
        self,
        dsn: str,
        pool_size: int,
        token_secret: bytes,
        connect_timeout: float = 5.0,
        command_timeout: float | None = 30.0,
    ) -> None:
        super().__init__(PostgresBackend(dsn, pool_size, connect_timeout, command_timeout), token_secret)


class _PostgresConnection:
    """Runs statements on a pool (each on any free connection) or on one connection (inside a transaction)."""

    def __init__(self, executor: asyncpg.Pool | asyncpg.Connection, pool: asyncpg.Pool) -> None:
        self._executor = executor
        self._pool = pool

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        async with self._unavailable():
            return [dict(row) for row in await self._run(self._executor.fetch, sql, args)]

    async def fetchrow(self, sql: str, *args: object) -> Row | None:
        async with self._unavailable():
            row = await self._run(self._executor.fetchrow, sql, args)
        return None if row is None else dict(row)

    async def execute(self, sql: str, *args: object) -> None:
        async with self._unavailable():
            await self._run(self._executor.execute, sql, args)

    async def _run(self, method: Callable[..., Awaitable[T]], sql: str, args: tuple[object, ...]) -> T:
        try:
            return await method(sql, *args)
        except asyncpg.InternalClientError:
            # A pooled connection the server had already closed (see _unavailable). asyncpg refuses before
            # sending anything, so running the statement again is safe even for a write; the pool terminated
            # that connection on release, and expiring the rest makes the second try open a live one. Not inside
            # a transaction: its connection is gone.
            if self._executor is not self._pool:
                raise
            await self._lost()
            return await method(sql, *args)

    async def execute_script(self, script: str) -> None:
        # Without arguments asyncpg uses the simple query protocol, which accepts several statements.
        await self.execute(script)

    @contextlib.asynccontextmanager
    async def _unavailable(self) -> AsyncIterator[None]:
        try:
            yield
        except _CONNECTION_ERRORS as e:
            await self._lost()
            raise Unavailable("metadata database is unavailable") from e
        except TimeoutError as e:  # connect_timeout or command_timeout
            await self._lost()
            raise Unavailable("metadata database did not answer in time") from e
        except asyncpg.InternalClientError as e:
            # "cannot switch to state ...; another operation (2) is in progress": the server's FATAL message
            # (e.g. its backend was terminated) reached an idle connection before the socket closed, leaving it
            # unusable. A lost connection, like the ones above.
            await self._lost()
            raise Unavailable("metadata database connection was lost") from e
        except asyncpg.InterfaceError as e:
            # A closing pool says so with a plain InterfaceError, which otherwise signals misuse (a bug).
            if self._pool.is_closing():
                raise Unavailable("metadata database is closed") from e
            raise

    async def _lost(self) -> None:
        # One lost connection usually means the others are lost too (restart, failover, terminated backends):
        # have the pool replace every idle one on its next use, so a client sees UNAVAILABLE once, not once
        # per pooled connection. Connections in use are replaced when they are released.
        await self._pool.expire_connections()


class _PostgresDatabase(_PostgresConnection):
    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool, pool)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlConnection]:
        # Acquire, BEGIN and COMMIT can fail on a lost connection too; statements in the block map their own.
        async with self._unavailable(), self._pool.acquire() as conn, conn.transaction():
            yield _PostgresConnection(conn, self._pool)

    async def close(self) -> None:
        await self._pool.close()
