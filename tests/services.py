"""Real services for the tests, and fresh stores on every storage backend.

Session fixtures: ``postgres_dsn`` (a database of its own on the local PostgreSQL, dropped at the end) and
``s3_endpoint`` (moto's S3 server on loopback, with dummy AWS credentials in the environment). When a service
cannot be reached, the tests that need it are skipped with the command that starts it (or fail when
``CI=true``).

Per-test fixtures: ``metadata_store`` and ``job_store`` (over ``sqlite`` and ``postgres``) and ``blob_store``
(over ``local`` and ``s3``) give a fresh, opened store; ``make_metadata_store`` / ``make_job_store`` /
``make_blob_store`` make more stores over the same database or bucket (unopened), and close them all afterwards.

``tests/conftest.py`` star-imports this module, which is how pytest finds the fixtures.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from tt_server.storage.local import LocalBlobStore
from tt_server.storage.postgres import PostgresMetadataStore
from tt_server.storage.s3 import S3BlobStore
from tt_server.storage.sql import SqlMetadataStore
from tt_server.storage.sql_jobs import SqlJobStore
from tt_server.storage.sqlite import SqliteMetadataStore

__all__ = [
    "BlobBackend",
    "MetadataBackend",
    "blob_backend",
    "blob_store",
    "job_store",
    "make_blob_store",
    "make_job_store",
    "make_metadata_store",
    "metadata_backend",
    "metadata_store",
    "postgres_dsn",
    "s3_endpoint",
]

T = TypeVar("T")

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
TOKEN_SECRET = b"tests-page-token-secret"
S3_PART_SIZE = 5 << 20  # the S3 minimum, so a test needs only a few MiB to go multipart


def service_missing(message: str) -> NoReturn:
    """Skip the test, or fail it on CI, where a missing service is a broken environment, not a choice."""
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code, even while an event loop runs in this thread.

    The service fixtures are synchronous on purpose, so that they can be requested from anywhere, including
    with ``request.getfixturevalue`` inside an async fixture, where the running loop cannot be re-entered.
    """

    async def main() -> T:
        return await make()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def with_database(dsn: str, database: str, **params: str) -> str:
    """``dsn`` pointing at another database, with extra query parameters (asyncpg sends unknown ones to the
    server as settings, e.g. ``search_path``)."""
    parts = urlsplit(dsn)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(path=f"/{database}", query=query))


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


# --- services -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a database created for this test session on the local PostgreSQL."""
    base = os.environ.get("TT_TEST_POSTGRES_DSN", POSTGRES_DSN)
    name = f"tt_test_{uuid.uuid4().hex[:12]}"
    try:
        run_async(lambda: _admin(base, f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as e:
        service_missing(f"PostgreSQL is not reachable at {base} ({e}). Start it with: {POSTGRES_START}")
    yield with_database(base, name)
    # FORCE: a store a failed test left open must not keep the database alive.
    run_async(lambda: _admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of moto's S3 server, running in a thread on a free loopback port."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        service_missing(f"moto's server is not installed ({e}). Install it with: .venv/bin/pip install 'moto[server]'")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: the OS picks one
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        # The normal AWS credential chain finds these; a developer's own profile must not leak in.
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        env.delenv("AWS_PROFILE", raising=False)
        env.setenv("AWS_CONFIG_FILE", os.devnull)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        yield f"http://{host}:{port}"
    server.stop()


# --- metadata stores ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetadataBackend:
    """Where a test's metadata lives: a SQLite file or a PostgreSQL schema of its own."""

    kind: str
    sqlite_path: Path | None = None
    postgres_dsn: str | None = None

    def store(self, token_secret: bytes = TOKEN_SECRET) -> SqlMetadataStore:
        if self.sqlite_path is not None:
            return SqliteMetadataStore(self.sqlite_path, token_secret=token_secret)
        assert self.postgres_dsn is not None
        return PostgresMetadataStore(self.postgres_dsn, pool_size=4, token_secret=token_secret)


@pytest.fixture(params=["sqlite", "postgres"])
def metadata_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataBackend]:
    if request.param == "sqlite":
        yield MetadataBackend("sqlite", sqlite_path=tmp_path / "metadata.db")
        return
    dsn: str = request.getfixturevalue("postgres_dsn")
    # A schema per test is much cheaper than a database per test and just as isolated for unqualified names.
    schema = f"t_{uuid.uuid4().hex[:12]}"
    run_async(lambda: _admin(dsn, f'CREATE SCHEMA "{schema}"'))
    yield MetadataBackend("postgres", postgres_dsn=with_database(dsn, urlsplit(dsn).path[1:], search_path=schema))
    run_async(lambda: _admin(dsn, f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
async def make_metadata_store(
    metadata_backend: MetadataBackend,
) -> AsyncIterator[Callable[..., SqlMetadataStore]]:
    """Make (unopened) stores over this test's database; all are closed after the test."""
    made: list[SqlMetadataStore] = []

    def make(token_secret: bytes = TOKEN_SECRET) -> SqlMetadataStore:
        made.append(metadata_backend.store(token_secret))
        return made[-1]

    yield make
    for store in made:
        await store.close()


@pytest.fixture
async def metadata_store(make_metadata_store: Callable[..., SqlMetadataStore]) -> SqlMetadataStore:
    store = make_metadata_store()
    await store.open()
    return store


@pytest.fixture
def make_job_store(make_metadata_store: Callable[..., SqlMetadataStore]) -> Callable[..., SqlJobStore]:
    """Make (unopened) job stores over this test's database, each over a backend of its own (as separate
    processes would be), closed after the test with the metadata stores that made the backends."""

    def make(token_secret: bytes = TOKEN_SECRET) -> SqlJobStore:
        return SqlJobStore(make_metadata_store(token_secret).backend, token_secret)

    return make


@pytest.fixture
async def job_store(make_job_store: Callable[..., SqlJobStore]) -> SqlJobStore:
    store = make_job_store()
    await store.open()
    return store


# --- blob stores --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlobBackend:
    """Where a test's blobs live: a folder, or a bucket of its own on the S3 server."""

    kind: str
    root: Path | None = None
    s3_endpoint: str | None = None
    bucket: str = ""
    prefix: str = ""

    def store(self) -> LocalBlobStore | S3BlobStore:
        if self.root is not None:
            return LocalBlobStore(self.root)
        return S3BlobStore(
            bucket=self.bucket,
            endpoint_url=self.s3_endpoint,
            region="us-east-1",
            prefix=self.prefix,
            part_size=S3_PART_SIZE,
        )


@pytest.fixture(params=["local", "s3"])
def blob_backend(request: pytest.FixtureRequest, tmp_path: Path) -> BlobBackend:
    if request.param == "local":
        return BlobBackend("local", root=tmp_path / "blobs")
    endpoint: str = request.getfixturevalue("s3_endpoint")
    # A prefix, so every test also checks that keys are mapped into it and back out.
    return BlobBackend("s3", s3_endpoint=endpoint, bucket=f"tt-test-{uuid.uuid4().hex[:12]}", prefix="tt/")


@pytest.fixture
async def make_blob_store(
    blob_backend: BlobBackend,
) -> AsyncIterator[Callable[[], LocalBlobStore | S3BlobStore]]:
    """Make (unopened) stores over this test's folder or bucket; all are closed after the test."""
    made: list[LocalBlobStore | S3BlobStore] = []

    def make() -> LocalBlobStore | S3BlobStore:
        made.append(blob_backend.store())
        return made[-1]

    yield make
    for store in made:
        await store.close()


@pytest.fixture
async def blob_store(
    make_blob_store: Callable[[], LocalBlobStore | S3BlobStore],
) -> LocalBlobStore | S3BlobStore:
    store = make_blob_store()
    await store.open()
    return store
