"""One SQL database under both SQL stores: the adapter protocol, its lifecycle, migrations and shared helpers.

``SqlMetadataStore`` (``sql.py``: models, versions, labels) and ``SqlJobStore`` (``sql_jobs.py``: batch jobs)
are siblings: each is built over one ``SqlBackend`` and neither imports the other. A backend opens one
``SqlDatabase`` (a PostgreSQL pool in ``postgres.py``, one SQLite connection in ``sqlite.py``) and applies the
schema migrations of its dialect; the composition root (``factory.open_stores``) opens it once and hands it to
both stores, so the server and the worker hold one pool, not one per store.

``SqlDatabase`` is a tiny adapter with ``fetch``/``fetchrow``/``execute`` and ``transaction()``. Queries use
PostgreSQL's ``$1, $2`` placeholders; the SQLite adapter rewrites them to ``?1, ?2``. Only SQL both databases
accept is used (``ON CONFLICT``, ``RETURNING``, no ``FOR UPDATE``). Adapters raise ``Unavailable`` when the
database cannot be reached.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, ClassVar, Protocol

from tt_server.errors import InvalidArgument, Unavailable

Row = dict[str, Any]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class SqlConnection(Protocol):
    """Runs statements; inside ``SqlDatabase.transaction()`` all of them run in that transaction."""

    async def fetch(self, sql: str, *args: object) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: object) -> Row | None: ...

    async def execute(self, sql: str, *args: object) -> None: ...

    async def execute_script(self, script: str) -> None:
        """Run several ``;``-separated statements without parameters (a migration file)."""


class SqlDatabase(SqlConnection, Protocol):
    """The adapter a backend provides; statements run outside ``transaction()`` autocommit one by one."""

    def transaction(self) -> AbstractAsyncContextManager[SqlConnection]:
        """Commit when the block exits normally, roll back when it raises."""
        ...

    async def close(self) -> None: ...


class SqlBackend:
    """One SQL database: the constructor does no I/O; ``open()`` connects and migrates (a no-op when open);
    ``close()`` disconnects; ``database`` is the open ``SqlDatabase`` (``Unavailable`` when not open).
    Subclasses only connect. Every store built over a backend shares its connection(s)."""

    dialect: ClassVar[str]  # names the folder under ``migrations/``
    migration_lock: ClassVar[str] = ""  # run first in the migration transaction, so two processes take turns

    def __init__(self) -> None:
        self._database: SqlDatabase | None = None

    async def _connect(self) -> SqlDatabase:
        raise NotImplementedError

    async def open(self) -> None:
        if self._database is not None:
            return
        database = await self._connect()
        try:
            await migrate(database, self.dialect, self.migration_lock)
        except BaseException:
            await database.close()
            raise
        self._database = database

    async def close(self) -> None:
        database, self._database = self._database, None
        if database is not None:
            await database.close()

    async def ping(self) -> None:
        await self.database.fetchrow("SELECT 1 AS one")

    @property
    def database(self) -> SqlDatabase:
        if self._database is None:
            raise Unavailable("the metadata database is not open")
        return self._database


class SqlStore:
    """What the sibling stores share: their backend, page tokens, and the blob GC table both write (the
    registry's uploads and the jobs' inputs and results go through one outbox, ``storage/outbox.py``).

    ``open()``/``close()`` open and close the backend, which is shared: a composition root that opened the
    backend itself does not call them."""

    def __init__(self, backend: SqlBackend, token_secret: bytes) -> None:
        self.backend = backend
        self._tokens = PageTokens(token_secret)

    async def open(self) -> None:
        """Connect and apply pending migrations (the backend's)."""
        await self.backend.open()

    async def close(self) -> None:
        await self.backend.close()

    async def ping(self) -> None:
        await self.backend.ping()

    @property
    def _db(self) -> SqlDatabase:
        return self.backend.database

    # --- blob garbage collection (outbox) ----------------------------------------------------------------
    async def add_blob_gc(self, blob_key: str, not_before_us: int) -> None:
        await self._db.execute(UPSERT_BLOB_GC, blob_key, not_before_us)

    async def due_blob_gc(self, now_us: int, limit: int) -> list[str]:
        rows = await self._db.fetch(
            "SELECT blob_key FROM blob_gc WHERE not_before <= $1 ORDER BY not_before, blob_key LIMIT $2",
            now_us,
            limit,
        )
        return [row["blob_key"] for row in rows]

    async def remove_blob_gc(self, blob_key: str) -> None:
        await self._db.execute("DELETE FROM blob_gc WHERE blob_key = $1", blob_key)


UPSERT_BLOB_GC = """
INSERT INTO blob_gc (blob_key, not_before) VALUES ($1, $2)
ON CONFLICT (blob_key) DO UPDATE SET not_before = excluded.not_before
"""

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    BIGINT PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)
"""


# --- migrations ---------------------------------------------------------------------------------------------
async def migrate(database: SqlDatabase, dialect: str, lock: str) -> None:
    """Apply the numbered ``migrations/<dialect>/NNNN_*.sql`` files not yet recorded, in one transaction."""
    folder = resources.files("tt_server.storage").joinpath("migrations").joinpath(dialect)
    files = sorted(
        (int(entry.name.split("_", 1)[0]), entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )
    async with database.transaction() as tx:
        if lock:
            await tx.execute(lock)
        await tx.execute(_CREATE_MIGRATIONS_TABLE)
        applied = {row["version"] for row in await tx.fetch("SELECT version FROM schema_migrations")}
        for number, name, script in files:
            if number not in applied:
                await tx.execute_script(script)
                await tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    number,
                    name,
                    now_us(),
                )


# --- page tokens --------------------------------------------------------------------------------------------
class PageTokens:
    """Opaque, tamper-evident cursors: base64url(JSON cursor + HMAC-SHA256 of it).

    The signature lets clients hold a cursor without being able to forge one, so a garbled or edited token is
    a clear INVALID_ARGUMENT rather than a silently wrong page.
    """

    _MAC_SIZE = hashlib.sha256().digest_size

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("token_secret must not be empty")
        self._secret = secret

    def encode(self, listing: str, after: str | int) -> str:
        body = json.dumps({"listing": listing, "after": after}, separators=(",", ":")).encode()
        raw = body + hmac.digest(self._secret, body, "sha256")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def decode(self, token: str, listing: str) -> Any:
        """The ``after`` value of a token this store made for ``listing``."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:  # includes binascii.Error and non-ASCII text
            raise _bad_token("is not a valid page token") from None
        body, mac = raw[: -self._MAC_SIZE], raw[-self._MAC_SIZE :]
        if not body or not hmac.compare_digest(mac, hmac.digest(self._secret, body, "sha256")):
            raise _bad_token("is not a valid page token")
        cursor = json.loads(body)
        if cursor["listing"] != listing:
            raise _bad_token("belongs to a different listing")
        return cursor["after"]


def _bad_token(description: str) -> InvalidArgument:
    return InvalidArgument.field("page_token", description)


# --- small helpers ----------------------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_us() -> int:
    return time.time_ns() // 1000


def us(seconds: float) -> int:
    return int(seconds * 1_000_000)


def from_us(microseconds: int) -> datetime:
    # timedelta arithmetic is exact; datetime.fromtimestamp(us / 1e6) can be a microsecond off.
    return _EPOCH + timedelta(microseconds=microseconds)


def clamp_page_size(requested: int) -> int:
    return DEFAULT_PAGE_SIZE if requested <= 0 else min(requested, MAX_PAGE_SIZE)
