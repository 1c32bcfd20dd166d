"""SqliteBackend: the embedded SQL database, one SQLite file driven through aiosqlite (``sqldb.SqlBackend``).

Both SQL stores run over it (``SqliteMetadataStore`` is a metadata store with a backend of its own).

One connection serves the whole process: SQLite allows a single writer anyway, and one connection means one
transaction at a time, which an ``asyncio.Lock`` enforces (statements outside a transaction take it too, or
they would run inside someone else's). ``BEGIN IMMEDIATE`` takes the write lock up front, so two processes
sharing the file queue on ``busy_timeout`` instead of failing halfway through a transaction. WAL lets readers
in other processes work while one writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiosqlite

from tt_server.errors import Unavailable
from tt_server.storage.sql import SqlMetadataStore
from tt_server.storage.sqldb import Row, SqlBackend, SqlConnection, SqlDatabase

_BUSY_TIMEOUT_MS = 10_000
_WAL_RETRY_MS = 20

# Primary result codes meaning "the file cannot be used right now"; anything else (a constraint, a bad
# query) is a bug or a domain error and propagates unchanged.
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
    }
)


class SqliteBackend(SqlBackend):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path

    async def _connect(self) -> SqlDatabase:
        return await _SqliteDatabase.connect(self._path)


class SqliteMetadataStore(SqlMetadataStore):
    """A metadata store over a SQLite backend of its own (tools and tests; the servers share one backend
    between both SQL stores: ``factory.open_stores``)."""

    def __init__(self, path: Path, token_secret: bytes) -> None:
        super().__init__(SqliteBackend(path), token_secret)


@functools.lru_cache(maxsize=512)
def _to_sqlite(sql: str) -> str:
    """``$1`` -> ``?1``: SQLite's numbered parameters, so a parameter may appear twice as in PostgreSQL."""
    return re.sub(r"\$(\d+)", r"?\1", sql)


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise Unavailable("metadata database is unavailable") from e
    except sqlite3.Error as e:
        if getattr(e, "sqlite_errorcode", 0) & 0xFF in _UNAVAILABLE_CODES:
            raise Unavailable("metadata database is unavailable") from e
        raise


async def _enable_wal(conn: aiosqlite.Connection) -> None:
    """Switch the file to WAL mode (a lasting property of the file, so this only does work on a new one).

    The switch needs an exclusive lock. When two processes open a new file at once, SQLite answers one of them
    BUSY straight away instead of waiting for busy_timeout (waiting could deadlock), so retry for a while.
    """
    for _ in range(_BUSY_TIMEOUT_MS // _WAL_RETRY_MS):
        try:
            await conn.execute_fetchall("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
        await asyncio.sleep(_WAL_RETRY_MS / 1000)
    await conn.execute_fetchall("PRAGMA journal_mode = WAL")  # last try: its error is the one to report


async def _to_the_end(operation: Coroutine[Any, Any, None]) -> None:
    """Await ``operation`` until it is done, even if the caller is cancelled meanwhile; the cancellation is
    raised afterwards (``asyncio.shield`` alone would return at once and let the next caller in too early)."""
    task = asyncio.ensure_future(operation)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                cancelled = True
                continue
        break
    try:
        task.result()  # its own error, if any
    finally:
        if cancelled:
            raise asyncio.CancelledError


class _SqliteConnection:
    """Runs statements on the shared connection; the caller holds the lock."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        with _unavailable():
            # fetchall also runs RETURNING statements to completion, so their changes are all applied.
            rows = await self._conn.execute_fetchall(_to_sqlite(sql), args)
        return [dict(row) for row in rows]

    async def fetchrow(self, sql: str, *args: object) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def execute(self, sql: str, *args: object) -> None:
        await self.fetch(sql, *args)

    async def execute_script(self, script: str) -> None:
        # Not sqlite3's executescript(): it commits first, which would break the migration's transaction.
        statement = ""
        for line in script.splitlines(keepends=True):
            statement += line
            if sqlite3.complete_statement(statement):
                await self.execute(statement)
                statement = ""
        if statement.strip():
            await self.execute(statement)


class _SqliteDatabase:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._tx = _SqliteConnection(conn)

    @classmethod
    async def connect(cls, path: Path) -> _SqliteDatabase:
        with _unavailable():
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves; sqlite3's implicit transactions would not
            # cover SELECTs and could not be IMMEDIATE.
            conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            with _unavailable():
                await conn.execute_fetchall(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                await conn.execute_fetchall("PRAGMA foreign_keys = ON")
                await _enable_wal(conn)
        except BaseException:
            await conn.close()
            raise
        return cls(conn)

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        async with self._lock:
            return await self._tx.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: object) -> Row | None:
        async with self._lock:
            return await self._tx.fetchrow(sql, *args)

    async def execute(self, sql: str, *args: object) -> None:
        async with self._lock:
            await self._tx.execute(sql, *args)

    async def execute_script(self, script: str) -> None:
        async with self._lock:
            await self._tx.execute_script(script)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlConnection]:
        async with self._lock:
            # BEGIN, COMMIT and ROLLBACK run to the end even when the caller is cancelled meanwhile (a client's
            # deadline): the aiosqlite thread runs a statement whose waiter is gone all the same, and a BEGIN
            # nobody ends would leave the one connection inside a transaction that refuses every later BEGIN
            # and swallows every later statement.
            try:
                await _to_the_end(self._tx.execute("BEGIN IMMEDIATE"))
                yield self._tx
                await _to_the_end(self._tx.execute("COMMIT"))
            except BaseException:
                await _to_the_end(self._rollback())
                raise

    async def _rollback(self) -> None:
        # A failed COMMIT may already have ended the transaction; the original error is the one to report.
        with contextlib.suppress(sqlite3.Error, Unavailable):
            await self._tx.execute("ROLLBACK")

    async def close(self) -> None:
        async with self._lock:
            await self._conn.close()
