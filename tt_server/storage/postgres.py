"""PostgresMetadataStore: the production MetadataStore on an asyncpg connection pool.

Transactions run at READ COMMITTED (the default); ``sql.py`` explains how row locks on ``models`` make that
enough. Migrations run under a transaction-scoped advisory lock, so replicas starting together take turns.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import asyncpg

from tt_server.errors import Unavailable
from tt_server.storage.sql import Row, SqlConnection, SqlDatabase, SqlMetadataStore

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

# Any fixed number works; it only has to differ from other advisory locks taken in the same database.
_MIGRATION_LOCK_ID = 0x7474_5F6D_6967  # "tt_mig"


class PostgresMetadataStore(SqlMetadataStore):
    dialect = "postgres"
    migration_lock = f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})"

    def __init__(self, dsn: str, pool_size: int, token_secret: bytes) -> None:
        super().__init__(token_secret)
        self._dsn = dsn
        self._pool_size = pool_size

    async def _connect(self) -> SqlDatabase:
        try:
            pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._pool_size)
        except _CONNECTION_ERRORS as e:
            raise Unavailable("metadata database is unavailable") from e
        return _PostgresDatabase(pool)


class _PostgresConnection:
    """Runs statements on a pool (each on any free connection) or on one connection (inside a transaction)."""

    def __init__(self, executor: asyncpg.Pool | asyncpg.Connection, pool: asyncpg.Pool) -> None:
        self._executor = executor
        self._pool = pool

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        with self._unavailable():
            return [dict(row) for row in await self._executor.fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args: object) -> Row | None:
        with self._unavailable():
            row = await self._executor.fetchrow(sql, *args)
        return None if row is None else dict(row)

    async def execute(self, sql: str, *args: object) -> None:
        with self._unavailable():
            await self._executor.execute(sql, *args)

    async def execute_script(self, script: str) -> None:
        # Without arguments asyncpg uses the simple query protocol, which accepts several statements.
        await self.execute(script)

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        try:
            yield
        except _CONNECTION_ERRORS as e:
            raise Unavailable("metadata database is unavailable") from e
        except asyncpg.InterfaceError as e:
            # A closing pool says so with a plain InterfaceError, which otherwise signals misuse (a bug).
            if self._pool.is_closing():
                raise Unavailable("metadata database is closed") from e
            raise


class _PostgresDatabase(_PostgresConnection):
    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool, pool)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlConnection]:
        # Acquire, BEGIN and COMMIT can fail on a lost connection too; statements in the block map their own.
        with self._unavailable():
            async with self._pool.acquire() as conn, conn.transaction():
                yield _PostgresConnection(conn, self._pool)

    async def close(self) -> None:
        await self._pool.close()
