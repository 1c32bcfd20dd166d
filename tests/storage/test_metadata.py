"""MetadataStore behaviour, run against every backend (SQLite file and PostgreSQL) through the same tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tt_server.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from tt_server.storage.metadata import NewVersion
from tt_server.storage.postgres import PostgresMetadataStore
from tt_server.storage.sql import SqlMetadataStore
from tt_server.storage.sql_jobs import SqlJobStore
from tt_server.storage.sqlite import SqliteMetadataStore
from tt_server.types import DType, ModelFormat, ModelVersion, Signature, TensorSpec, VersionSource

SIGNATURE = Signature(
    inputs=(TensorSpec("features", DType.FLOAT32, (-1, 3)),),
    outputs=(TensorSpec("score", DType.FLOAT32, (-1, 1)), TensorSpec("id", DType.STRING, (-1,))),
)


def draft(name: str, **fields: object) -> ModelVersion:
    values: dict[str, object] = {
        "model_name": name,
        "version": 0,
        "format": ModelFormat.KERAS,
        "sha256": "ab" * 32,
        "size_bytes": 1234,
        "blob_key": f"models/{name}/{uuid.uuid4().hex}",
        "signature": SIGNATURE,
        "source": VersionSource.UPLOAD,
        "created_at": datetime(2000, 1, 1, tzinfo=UTC),
    }
    values.update(fields)
    return ModelVersion(**values)  # type: ignore[arg-type]


async def publish(
    store: SqlMetadataStore, name: str, labels: tuple[str, ...] = (), description: str = "", **fields: object
) -> ModelVersion:
    return await store.create_version(NewVersion(draft(name, **fields), labels, description))


def now_us() -> int:
    return time.time_ns() // 1000


# --- versions -----------------------------------------------------------------------------------------------
async def test_create_version_round_trips_every_field(metadata_store: SqlMetadataStore) -> None:
    before = datetime.now(UTC)
    created = await publish(
        metadata_store,
        "iris",
        labels=("prod", "canary"),
        format=ModelFormat.SAVED_MODEL_TAR_GZ,
        description="retrained",
        feature_names=("a", "b", "c"),
        metadata={"team": "ml", "ticket": "42"},
        source=VersionSource.TRAINING,
        parent_version=7,
        training_session_id="session-1",
    )
    assert created.version == 1
    assert created.labels == ("canary", "prod")
    # The store stamps the time; the draft's is ignored.
    assert created.created_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= created.created_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert await metadata_store.get_version("iris", 1) == created
    assert await metadata_store.get_latest_version("iris") == created
    assert await metadata_store.get_labelled_version("iris", "prod") == created


async def test_model_summarises_its_versions_and_labels(metadata_store: SqlMetadataStore) -> None:
    await publish(metadata_store, "iris", labels=("prod",), description="flowers")
    await publish(metadata_store, "iris", labels=("canary",))
    model = await metadata_store.get_model("iris")
    assert (model.name, model.description) == ("iris", "flowers")  # an empty description keeps the old one
    assert (model.latest_version, model.version_count) == (2, 2)
    assert model.labels == {"prod": 1, "canary": 2}
    assert model.created_at <= model.updated_at

    # Only the version that creates the model describes it; SetModelDescription changes it later.
    await publish(metadata_store, "iris", description="irises")
    assert (await metadata_store.get_model("iris")).description == "flowers"
    await metadata_store.set_description("iris", "irises")
    assert (await metadata_store.get_model("iris")).description == "irises"


async def test_concurrent_first_uploads_get_consecutive_versions(metadata_store: SqlMetadataStore) -> None:
    created = await asyncio.gather(*(publish(metadata_store, "racy") for _ in range(10)))
    assert sorted(v.version for v in created) == list(range(1, 11))
    model = await metadata_store.get_model("racy")
    assert (model.latest_version, model.version_count) == (10, 10)


async def test_version_numbers_are_never_reused(metadata_store: SqlMetadataStore) -> None:
    for _ in range(3):
        await publish(metadata_store, "m")
    await metadata_store.delete_version("m", 3, force=False)
    assert (await publish(metadata_store, "m")).version == 4
    assert (await metadata_store.get_latest_version("m")).version == 4

    for version in (1, 2, 4):
        await metadata_store.delete_version("m", version, force=False)
    model = await metadata_store.get_model("m")
    assert (model.latest_version, model.version_count) == (None, 0)
    with pytest.raises(NotFound, match="has no versions"):
        await metadata_store.get_latest_version("m")
    assert (await publish(metadata_store, "m")).version == 5


async def test_create_version_moves_labels_to_the_new_version(metadata_store: SqlMetadataStore) -> None:
    await publish(metadata_store, "m", labels=("prod", "stable"))
    await publish(metadata_store, "m", labels=("prod",))
    assert (await metadata_store.get_version("m", 1)).labels == ("stable",)
    assert (await metadata_store.get_version("m", 2)).labels == ("prod",)
    assert (await metadata_store.get_model("m")).labels == {"prod": 2, "stable": 1}


# --- labels -------------------------------------------------------------------------------------------------
async def test_set_and_delete_labels(metadata_store: SqlMetadataStore) -> None:
    await publish(metadata_store, "m")
    await publish(metadata_store, "m")
    assert await metadata_store.set_label("m", "prod", 1) is None
    assert await metadata_store.set_label("m", "prod", 2) == 1
    assert (await metadata_store.get_labelled_version("m", "prod")).version == 2
    assert (await metadata_store.get_version("m", 1)).labels == ()

    assert await metadata_store.delete_label("m", "prod") == 2
    with pytest.raises(NotFound, match="label 'prod'"):
        await metadata_store.get_labelled_version("m", "prod")
    with pytest.raises(NotFound, match="label 'prod'"):
        await metadata_store.delete_label("m", "prod")


async def test_set_label_on_a_missing_version_is_not_found(metadata_store: SqlMetadataStore) -> None:
    await publish(metadata_store, "m")
    with pytest.raises(NotFound, match="version 9"):
        await metadata_store.set_label("m", "prod", 9)
    with pytest.raises(NotFound, match="model 'nope'"):
        await metadata_store.set_label("nope", "prod", 1)
    assert (await metadata_store.get_model("m")).labels == {}


# --- deletes and blob garbage collection --------------------------------------------------------------------
async def test_deleting_a_labelled_version_needs_force(metadata_store: SqlMetadataStore) -> None:
    v1 = await publish(metadata_store, "m", labels=("prod", "canary"))
    with pytest.raises(FailedPrecondition, match="canary, prod"):
        await metadata_store.delete_version("m", 1, force=False)
    # Nothing changed.
    assert (await metadata_store.get_version("m", 1)).labels == ("canary", "prod")
    assert await metadata_store.due_blob_gc(now_us() + 10**9, 10) == []

    assert await metadata_store.delete_version("m", 1, force=True) == v1.blob_key
    assert (await metadata_store.get_model("m")).labels == {}
    with pytest.raises(NotFound, match="version 1"):
        await metadata_store.get_version("m", 1)
    assert await metadata_store.due_blob_gc(now_us(), 10) == [v1.blob_key]


async def test_delete_model_queues_every_blob(metadata_store: SqlMetadataStore) -> None:
    keys = [(await publish(metadata_store, "m", labels=("prod",))).blob_key for _ in range(3)]
    other = await publish(metadata_store, "other")

    assert await metadata_store.delete_model("m") == keys
    assert sorted(await metadata_store.due_blob_gc(now_us(), 10)) == sorted(keys)
    with pytest.raises(NotFound, match="model 'm'"):
        await metadata_store.get_model("m")
    with pytest.raises(NotFound, match="model 'm'"):
        await metadata_store.delete_model("m")
    assert [m.name for m in (await metadata_store.list_models(0, "")).items] == ["other"]
    assert await metadata_store.get_version("other", 1) == other
    # The name is free again, and its numbering starts afresh with the new model.
    assert (await publish(metadata_store, "m")).version == 1


async def test_create_version_claims_its_blob_from_the_gc_queue(metadata_store: SqlMetadataStore) -> None:
    # The registry queues a blob before uploading it, so a crash mid-upload still gets it collected.
    await metadata_store.add_blob_gc("models/m/blob", now_us() + 3_600_000_000)
    await metadata_store.add_blob_gc("models/m/unrelated", now_us() + 3_600_000_000)
    await publish(metadata_store, "m", blob_key="models/m/blob")
    assert await metadata_store.due_blob_gc(now_us() + 7_200_000_000, 10) == ["models/m/unrelated"]


async def test_blob_gc_queue(metadata_store: SqlMetadataStore) -> None:
    await metadata_store.add_blob_gc("late", 300)
    await metadata_store.add_blob_gc("early", 100)
    await metadata_store.add_blob_gc("middle", 200)
    assert await metadata_store.due_blob_gc(now_us=150, limit=10) == ["early"]
    assert await metadata_store.due_blob_gc(now_us=1000, limit=2) == ["early", "middle"]

    await metadata_store.add_blob_gc("early", 500)  # queueing again reschedules
    assert await metadata_store.due_blob_gc(now_us=1000, limit=10) == ["middle", "late", "early"]
    await metadata_store.remove_blob_gc("middle")
    await metadata_store.remove_blob_gc("never-queued")
    assert await metadata_store.due_blob_gc(now_us=1000, limit=10) == ["late", "early"]


# --- not found ----------------------------------------------------------------------------------------------
async def test_missing_things_are_not_found(metadata_store: SqlMetadataStore) -> None:
    await publish(metadata_store, "m")
    no_model, no_version = "model 'x' not found", "version 2 of model 'm' not found"
    cases: list[tuple[str, Coroutine[Any, Any, object]]] = [
        (no_model, metadata_store.get_model("x")),
        (no_model, metadata_store.get_version("x", 1)),
        (no_model, metadata_store.get_latest_version("x")),
        (no_model, metadata_store.get_labelled_version("x", "prod")),
        (no_model, metadata_store.list_versions("x", 10, "")),
        (no_model, metadata_store.delete_version("x", 1, force=True)),
        (no_model, metadata_store.delete_model("x")),
        (no_model, metadata_store.set_label("x", "prod", 1)),
        (no_model, metadata_store.delete_label("x", "prod")),
        (no_version, metadata_store.get_version("m", 2)),
        (no_version, metadata_store.delete_version("m", 2, force=True)),
        (no_version, metadata_store.set_label("m", "prod", 2)),
        ("label 'prod' of model 'm' not found", metadata_store.get_labelled_version("m", "prod")),
        ("label 'prod' of model 'm' not found", metadata_store.delete_label("m", "prod")),
    ]
    results = await asyncio.gather(*(call for _, call in cases), return_exceptions=True)
    for (message, _), result in zip(cases, results, strict=True):
        assert isinstance(result, NotFound) and result.message == message, (message, result)


# --- pagination ---------------------------------------------------------------------------------------------
async def test_list_models_in_pages(metadata_store: SqlMetadataStore) -> None:
    names = [f"model-{i}" for i in range(7)]
    for name in reversed(names):
        await publish(metadata_store, name, labels=("prod",))
    await publish(metadata_store, "model-3")

    seen, token, pages = [], "", 0
    while True:
        page = await metadata_store.list_models(3, token)
        seen.extend(page.items)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert [m.name for m in seen] == names
    assert all(m.labels == {"prod": 1} for m in seen)
    assert [m.version_count for m in seen] == [1, 1, 1, 2, 1, 1, 1]

    everything = await metadata_store.list_models(0, "")  # 0 = the default size, which fits all seven
    assert [m.name for m in everything.items] == names
    assert everything.next_page_token == ""


async def test_list_versions_in_pages(metadata_store: SqlMetadataStore) -> None:
    for _ in range(5):
        await publish(metadata_store, "m")
    await metadata_store.set_label("m", "prod", 4)
    await metadata_store.delete_version("m", 2, force=False)

    first = await metadata_store.list_versions("m", 2, "")
    second = await metadata_store.list_versions("m", 2, first.next_page_token)
    assert [v.version for v in first.items] == [5, 4]  # newest first
    assert [v.version for v in second.items] == [3, 1]
    assert first.items[1].labels == ("prod",)
    assert second.next_page_token == ""  # exactly full last page: no empty extra page

    await publish(metadata_store, "empty")
    await metadata_store.delete_version("empty", 1, force=False)
    assert await metadata_store.list_versions("empty", 0, "") == type(first)([], "")


async def test_bad_page_tokens_are_invalid_arguments(
    metadata_store: SqlMetadataStore, make_metadata_store: Callable[..., SqlMetadataStore]
) -> None:
    for name in ("a", "b", "c"):
        await publish(metadata_store, name)
        await publish(metadata_store, name)
    models_token = (await metadata_store.list_models(1, "")).next_page_token
    versions_token = (await metadata_store.list_versions("a", 1, "")).next_page_token
    tampered = models_token[:-2] + ("A" if models_token[-2] != "A" else "B") + models_token[-1]

    other_secret = make_metadata_store(token_secret=b"another-secret")
    await other_secret.open()

    results = await asyncio.gather(
        metadata_store.list_models(1, tampered),
        metadata_store.list_models(1, "not a token!"),
        metadata_store.list_models(1, "é"),
        metadata_store.list_models(1, "AAAA"),
        metadata_store.list_models(1, versions_token),  # another listing's token
        metadata_store.list_versions("b", 1, versions_token),  # another model's token
        other_secret.list_models(1, models_token),  # signed with another secret
        return_exceptions=True,
    )
    for result in results:
        assert isinstance(result, InvalidArgument), result
        assert [v.field for v in result.violations] == ["page_token"]
    # The genuine token still works, also on another store with the same secret (another replica).
    replica = make_metadata_store()
    await replica.open()
    assert [m.name for m in (await replica.list_models(1, models_token)).items] == ["b"]


# --- lifecycle ----------------------------------------------------------------------------------------------
async def test_migrations_are_idempotent(
    metadata_store: SqlMetadataStore, make_metadata_store: Callable[..., SqlMetadataStore]
) -> None:
    created = await publish(metadata_store, "m")
    again = make_metadata_store()
    await again.open()  # the schema is there: nothing to apply, nothing lost
    assert await again.get_version("m", 1) == created
    await again.ping()


async def test_two_processes_can_migrate_at_once(
    make_metadata_store: Callable[..., SqlMetadataStore],
) -> None:
    first, second = make_metadata_store(), make_metadata_store()
    # return_exceptions: both opens finish before the test (and the fixture's closing) goes on.
    assert await asyncio.gather(first.open(), second.open(), return_exceptions=True) == [None, None]
    created = await publish(first, "m")
    assert await second.get_version("m", 1) == created


async def test_a_closed_store_is_unavailable(metadata_store: SqlMetadataStore) -> None:
    await metadata_store.close()
    with pytest.raises(Unavailable):
        await metadata_store.ping()
    with pytest.raises(Unavailable):
        await metadata_store.get_model("m")


async def test_sqlite_unreachable_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    store = SqliteMetadataStore(tmp_path / "a-file" / "metadata.db", token_secret=b"s")
    with pytest.raises(Unavailable):
        await store.open()


async def test_postgres_unreachable_is_unavailable() -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    store = PostgresMetadataStore("postgresql://postgres@127.0.0.1:1/test", pool_size=1, token_secret=b"s")
    with pytest.raises(Unavailable):
        await store.open()


# --- serving policy and retention ---------------------------------------------------------------------------
async def test_prune_removes_exactly_what_retention_allows(metadata_store: SqlMetadataStore) -> None:
    import dataclasses

    from tests.jobs.test_store import new_job
    from tt_server.types import RetentionPolicy, ServingPolicy

    await publish(metadata_store, "m")  # 1: upload
    for _ in range(7):  # 2..8: training checkpoints
        await publish(metadata_store, "m", source=VersionSource.TRAINING)
    await metadata_store.set_label("m", "keep", 2)
    await metadata_store.pin_version("stream", "m", 3, now_us() + 60_000_000)
    await metadata_store.pin_version("lapsed", "m", 4, now_us() - 1)  # a crashed holder's pin: no protection
    jobs = SqlJobStore(metadata_store.backend, b"secret")  # the sibling store over the same database
    await jobs.create_job(dataclasses.replace(new_job("m"), model_version=5), owns_input=False)
    await metadata_store.set_retention("m", RetentionPolicy(keep_training_checkpoints=2))
    blobs = {n: (await metadata_store.get_version("m", n)).blob_key for n in (4, 6)}
    # Checkpoints newest first: 8, 7 kept; 2 labelled, 3 pinned, 5 used by a queued job; 1 is served.
    assert await metadata_store.prune_versions("m") == [4, 6]
    assert await metadata_store.prune_versions("m") == []
    # Their blobs go through the GC outbox, due at once.
    assert set(blobs.values()) <= set(await metadata_store.due_blob_gc(now_us() + 1, 100))
    await metadata_store.unpin("stream")
    await metadata_store.promote_version("m", 8)  # promoted: served by latest, no longer a checkpoint
    await metadata_store.set_retention("m", RetentionPolicy(keep_training_checkpoints=None, keep_versions=2))
    # Newest first: 8 (served), 7 kept by the count; 1, 3 go; 2 labelled and 5 job-used stay.
    assert await metadata_store.prune_versions("m") == [1, 3]
    assert [v.version for v in (await metadata_store.list_versions("m", 0, "")).items] == [8, 7, 5, 2]
    assert (await metadata_store.get_served_version("m")).version == 8

    await metadata_store.set_serving_policy("m", ServingPolicy(version=5))
    with pytest.raises(FailedPrecondition, match="serving policy"):
        await metadata_store.delete_version("m", 5, force=True)
    with pytest.raises(FailedPrecondition, match="no version 99"):
        await metadata_store.set_serving_policy("m", ServingPolicy(version=99))


async def test_a_write_cancelled_at_any_point_leaves_the_store_usable(metadata_store: SqlMetadataStore) -> None:
    # A caller cancelled mid-transaction (a client's deadline during an upload) must not leave the connection
    # inside a transaction: SQLite's one connection would then refuse every later BEGIN, and every statement
    # outside a transaction would join the abandoned one.
    for steps in range(1, 25):
        task = asyncio.create_task(publish(metadata_store, "m"))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert (await publish(metadata_store, f"other-{steps}")).version == 1
    # Each cancelled write happened whole or not at all: the version numbers have no gap.
    try:
        numbers = sorted(v.version for v in (await metadata_store.list_versions("m", 0, "")).items)
    except NotFound:
        numbers = []  # every cancelled write was rolled back (how far each got depends on the machine's speed)
    assert numbers == list(range(1, len(numbers) + 1))
