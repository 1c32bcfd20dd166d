"""The MetadataStore written once in SQL, shared by PostgreSQL and SQLite.

``SqlMetadataStore`` holds every query about models, versions and labels, over an ``SqlBackend``
(``sqldb.py``: the adapter, migrations and helpers it shares with its sibling ``SqlJobStore``).

Concurrency: every change to a model starts by updating its ``models`` row, which on PostgreSQL takes that
row's lock, so changes to one model's versions and labels apply one at a time (SQLite serialises all writes
anyway). Version numbers come from ``models.next_version``, which only ever grows, so a number is never handed
out twice, even after deletes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import NoReturn

from tt_server.errors import FailedPrecondition, NotFound
from tt_server.storage.metadata import NewVersion
from tt_server.storage.sqldb import UPSERT_BLOB_GC, Row, SqlConnection, SqlStore, clamp_page_size, from_us, now_us
from tt_server.types import (
    FrozenGraphNodes,
    ImageScaling,
    Model,
    ModelFormat,
    ModelVersion,
    Page,
    RetentionPolicy,
    ServingPolicy,
    Signature,
    VersionSource,
)

_MAX_BIGINT = 2**63 - 1


_VERSION_COLUMNS = (
    "model_name, version, format, sha256, size_bytes, blob_key, signature, feature_names, description, "
    "metadata, source, parent_version, training_session_id, created_at, class_names, frozen_graph, image_scaling, "
    "promoted, retired"
)

# Versions the ``latest`` serving policy may select: anything but an unpromoted training checkpoint or a retired
# repository version.
_ELIGIBLE_FOR_LATEST = "(source <> 'training' OR promoted = 1) AND retired = 0"

# Correlated subqueries rather than a GROUP BY join: simple, and fast with the primary key on model_versions.
_SELECT_MODELS = """
SELECT m.name, m.description, m.created_at, m.updated_at,
       m.serving_policy, m.keep_training_checkpoints, m.keep_versions,
       (SELECT max(v.version) FROM model_versions v WHERE v.model_name = m.name) AS latest_version,
       (SELECT count(*) FROM model_versions v WHERE v.model_name = m.name) AS version_count,
       CASE
         WHEN m.serving_policy = 'latest' THEN
           (SELECT max(v.version) FROM model_versions v
            WHERE v.model_name = m.name AND (v.source <> 'training' OR v.promoted = 1) AND v.retired = 0)
         WHEN m.serving_policy LIKE 'label:%' THEN
           (SELECT l.version FROM labels l WHERE l.model_name = m.name AND l.label = substr(m.serving_policy, 7))
         ELSE
           (SELECT v.version FROM model_versions v
            WHERE v.model_name = m.name AND 'version:' || v.version = m.serving_policy)
       END AS served_version
FROM models m
"""

_UPSERT_LABEL = """
INSERT INTO labels (model_name, label, version, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (model_name, label) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at
"""


class SqlMetadataStore(SqlStore):
    """A ``MetadataStore`` over any ``SqlBackend``; see the module docstring for the concurrency rules.

    Lifecycle: the constructor does no I/O; ``open()`` opens the backend (connects and migrates); ``close()``
    closes it (``SqlStore``). All methods may be called concurrently from one event loop.
    """

    # --- models -------------------------------------------------------------------------------------------
    async def list_models(self, page_size: int, page_token: str) -> Page[Model]:
        size = clamp_page_size(page_size)
        after = self._tokens.decode(page_token, "models") if page_token else ""
        rows = await self._db.fetch(_SELECT_MODELS + "WHERE m.name > $1 ORDER BY m.name LIMIT $2", after, size + 1)
        page = rows[:size]
        labels: dict[str, dict[str, int]] = {row["name"]: {} for row in page}
        if page:
            # The page is a contiguous run of names, so one range query finds exactly its models' labels.
            label_rows = await self._db.fetch(
                "SELECT model_name, label, version FROM labels WHERE model_name >= $1 AND model_name <= $2 "
                "ORDER BY label",
                page[0]["name"],
                page[-1]["name"],
            )
            for row in label_rows:
                labels[row["model_name"]][row["label"]] = row["version"]
        token = self._tokens.encode("models", page[-1]["name"]) if len(rows) > size else ""
        return Page([_model_from_row(row, labels[row["name"]]) for row in page], token)

    async def get_model(self, name: str) -> Model:
        row = await self._db.fetchrow(_SELECT_MODELS + "WHERE m.name = $1", name)
        if row is None:
            raise _model_not_found(name)
        label_rows = await self._db.fetch(
            "SELECT label, version FROM labels WHERE model_name = $1 ORDER BY label", name
        )
        return _model_from_row(row, {r["label"]: r["version"] for r in label_rows})

    async def delete_model(self, name: str) -> list[str]:
        now = now_us()
        async with self._db.transaction() as tx:
            await _lock_model(tx, name, now)
            rows = await tx.fetch("SELECT blob_key FROM model_versions WHERE model_name = $1 ORDER BY version", name)
            # The CAST tells PostgreSQL the parameter's type, which a bare $2 in a select list does not.
            await tx.execute(
                "INSERT INTO blob_gc (blob_key, not_before) "
                "SELECT blob_key, CAST($2 AS BIGINT) FROM model_versions WHERE model_name = $1 "
                "ON CONFLICT (blob_key) DO UPDATE SET not_before = excluded.not_before",
                name,
                now,
            )
            await tx.execute("DELETE FROM labels WHERE model_name = $1", name)
            await tx.execute("DELETE FROM models WHERE name = $1", name)  # versions follow by ON DELETE CASCADE
        return [row["blob_key"] for row in rows]

    # --- versions ------------------------------------------------------------------------------------------
    async def create_version(self, new: NewVersion) -> ModelVersion:
        v = new.version
        now = now_us()
        async with self._db.transaction() as tx:
            # One upsert both creates the model on its first version and allocates the number. Being a single
            # statement it cannot interleave with a concurrent first upload or delete_model, as a
            # check-then-insert, or an INSERT ... DO NOTHING then an UPDATE, could. Its row lock serialises
            # uploads of one model.
            # The description and serving policy are the model's: set when this creates it, never changed here.
            row = await tx.fetchrow(
                "INSERT INTO models (name, description, created_at, updated_at, next_version, serving_policy) "
                "VALUES ($1, $2, $3, $3, 2, $4) "
                "ON CONFLICT (name) DO UPDATE SET next_version = models.next_version + 1, "
                "updated_at = excluded.updated_at "
                "RETURNING next_version - 1 AS version, serving_policy",
                v.model_name,
                new.model_description,
                now,
                str(new.serving_policy or ServingPolicy()),
            )
            assert row is not None  # an upsert with RETURNING always yields its row
            number: int = row["version"]
            if new.serving_policy is not None and row["serving_policy"] != str(new.serving_policy):
                raise FailedPrecondition(
                    f"model {v.model_name!r} exists with serving policy {row['serving_policy']}, not "
                    f"{new.serving_policy}; change it with SetServingPolicy (`tt models policy`)"
                )
            await tx.execute(
                f"INSERT INTO model_versions ({_VERSION_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
                v.model_name,
                number,
                v.format.value,
                v.sha256,
                v.size_bytes,
                v.blob_key,
                json.dumps(v.signature.to_json()),
                json.dumps(list(v.feature_names)),
                v.description,
                json.dumps(v.metadata, sort_keys=True),
                v.source.value,
                v.parent_version,
                v.training_session_id,
                now,
                json.dumps(list(v.class_names)),
                None if v.frozen_graph is None else json.dumps(v.frozen_graph.to_json()),
                v.image_scaling.value,
                int(v.promoted),
                int(v.retired),
            )
            # The registry may have queued the blob for collection while it was uploading; it is claimed now.
            await tx.execute("DELETE FROM blob_gc WHERE blob_key = $1", v.blob_key)
            labels = tuple(sorted(set(new.set_labels)))
            for label in labels:
                await tx.execute(_UPSERT_LABEL, v.model_name, label, number, now)
            if number == 1 and new.serving_policy is not None:
                await _check_policy_target(tx, v.model_name, new.serving_policy)
        # The store stamps created_at, like the number, so both reflect the order of commits.
        return dataclasses.replace(v, version=number, created_at=from_us(now), labels=labels)

    async def get_version(self, name: str, version: int) -> ModelVersion:
        found = await self._versions("WHERE model_name = $1 AND version = $2", name, version)
        if not found:
            await _raise_not_found(self._db, name, f"version {version} of model {name!r} not found")
        return found[0]

    async def get_latest_version(self, name: str) -> ModelVersion:
        found = await self._versions("WHERE model_name = $1 ORDER BY version DESC LIMIT 1", name)
        if not found:
            await _raise_not_found(self._db, name, f"model {name!r} has no versions")
        return found[0]

    async def get_served_version(self, name: str) -> ModelVersion:
        row = await self._db.fetchrow("SELECT serving_policy FROM models WHERE name = $1", name)
        if row is None:
            raise _model_not_found(name)
        policy = ServingPolicy.parse(row["serving_policy"])
        if policy.label is not None:
            return await self.get_labelled_version(name, policy.label)
        if policy.version is not None:
            return await self.get_version(name, policy.version)
        found = await self._versions(
            f"WHERE model_name = $1 AND {_ELIGIBLE_FOR_LATEST} ORDER BY version DESC LIMIT 1", name
        )
        if not found:
            raise NotFound(
                f"model {name!r} has no version its serving policy 'latest' selects (training checkpoints serve "
                "only when pinned by version or label, or promoted)"
            )
        return found[0]

    async def set_serving_policy(self, name: str, policy: ServingPolicy) -> ServingPolicy:
        async with self._db.transaction() as tx:
            await _lock_model(tx, name, now_us())
            row = await tx.fetchrow("SELECT serving_policy FROM models WHERE name = $1", name)
            assert row is not None  # locked above
            await _check_policy_target(tx, name, policy)
            await tx.execute("UPDATE models SET serving_policy = $2 WHERE name = $1", name, str(policy))
        return ServingPolicy.parse(row["serving_policy"])

    async def promote_version(self, name: str, version: int) -> ModelVersion:
        async with self._db.transaction() as tx:
            await _lock_model(tx, name, now_us())
            row = await tx.fetchrow(
                "UPDATE model_versions SET promoted = 1 WHERE model_name = $1 AND version = $2 AND source = 'training' "
                "RETURNING version",
                name,
                version,
            )
            if (
                row is None
                and await tx.fetchrow(
                    "SELECT 1 AS one FROM model_versions WHERE model_name = $1 AND version = $2", name, version
                )
                is None
            ):
                raise NotFound(f"version {version} of model {name!r} not found")
        return await self.get_version(name, version)

    async def set_retired(self, name: str, version: int, retired: bool) -> None:
        async with self._db.transaction() as tx:
            await _lock_model(tx, name, now_us())
            await tx.execute(
                "UPDATE model_versions SET retired = $3 WHERE model_name = $1 AND version = $2",
                name,
                version,
                int(retired),
            )

    async def set_description(self, name: str, description: str) -> None:
        async with self._db.transaction() as tx:
            await _lock_model(tx, name, now_us())
            await tx.execute("UPDATE models SET description = $2 WHERE name = $1", name, description)

    async def set_retention(self, name: str, retention: RetentionPolicy) -> None:
        async with self._db.transaction() as tx:
            await _lock_model(tx, name, now_us())
            await tx.execute(
                "UPDATE models SET keep_training_checkpoints = $2, keep_versions = $3 WHERE name = $1",
                name,
                -1 if retention.keep_training_checkpoints is None else retention.keep_training_checkpoints,
                retention.keep_versions or 0,
            )

    async def get_labelled_version(self, name: str, label: str) -> ModelVersion:
        found = await self._versions(
            "WHERE model_name = $1 AND version = (SELECT version FROM labels WHERE model_name = $1 AND label = $2)",
            name,
            label,
        )
        if not found:
            await _raise_not_found(self._db, name, f"label {label!r} of model {name!r} not found")
        return found[0]

    async def list_versions(self, name: str, page_size: int, page_token: str) -> Page[ModelVersion]:
        size = clamp_page_size(page_size)
        # The listing name binds a token to one model, so it cannot be replayed against another.
        listing = f"versions/{name}"
        # Newest first, as the API promises; the cursor is the last version already listed.
        before = self._tokens.decode(page_token, listing) if page_token else _MAX_BIGINT
        found = await self._versions(
            "WHERE model_name = $1 AND version < $2 ORDER BY version DESC LIMIT $3", name, before, size + 1
        )
        if not found and await self._db.fetchrow("SELECT 1 AS one FROM models WHERE name = $1", name) is None:
            raise _model_not_found(name)
        page = found[:size]
        token = self._tokens.encode(listing, page[-1].version) if len(found) > size else ""
        return Page(page, token)

    async def delete_version(self, name: str, version: int, force: bool) -> str:
        now = now_us()
        async with self._db.transaction() as tx:
            await _lock_model(tx, name, now)
            row = await tx.fetchrow(
                "SELECT blob_key FROM model_versions WHERE model_name = $1 AND version = $2", name, version
            )
            if row is None:
                raise NotFound(f"version {version} of model {name!r} not found")
            labels = await _labels_of(tx, name, version)
            policy = await _policy_of(tx, name)
            if policy.version == version or (policy.label is not None and policy.label in labels):
                raise FailedPrecondition(
                    f"version {version} of model {name!r} is what its serving policy {policy} serves; "
                    "change the policy first (SetServingPolicy, `tt models policy`)"
                )
            if labels and not force:
                raise FailedPrecondition(
                    f"version {version} of model {name!r} is labelled {', '.join(labels)}; "
                    "move or delete the labels first, or delete with force"
                )
            await tx.execute("DELETE FROM labels WHERE model_name = $1 AND version = $2", name, version)
            await tx.execute("DELETE FROM model_versions WHERE model_name = $1 AND version = $2", name, version)
            await tx.execute(UPSERT_BLOB_GC, row["blob_key"], now)
        return str(row["blob_key"])

    # --- labels --------------------------------------------------------------------------------------------
    async def set_label(self, name: str, label: str, version: int) -> int | None:
        now = now_us()
        async with self._db.transaction() as tx:
            await _lock_model(tx, name, now)
            exists = await tx.fetchrow(
                "SELECT 1 AS one FROM model_versions WHERE model_name = $1 AND version = $2", name, version
            )
            if exists is None:
                raise NotFound(f"version {version} of model {name!r} not found")
            old = await tx.fetchrow("SELECT version FROM labels WHERE model_name = $1 AND label = $2", name, label)
            await tx.execute(_UPSERT_LABEL, name, label, version, now)
        return None if old is None else int(old["version"])

    async def delete_label(self, name: str, label: str) -> int:
        async with self._db.transaction() as tx:
            await _lock_model(tx, name, now_us())
            if (await _policy_of(tx, name)).label == label:
                raise FailedPrecondition(
                    f"label {label!r} of model {name!r} is its serving policy; change the policy first "
                    "(SetServingPolicy, `tt models policy`)"
                )
            row = await tx.fetchrow(
                "DELETE FROM labels WHERE model_name = $1 AND label = $2 RETURNING version", name, label
            )
            if row is None:
                raise NotFound(f"label {label!r} of model {name!r} not found")
        return int(row["version"])

    # --- retention ----------------------------------------------------------------------------------------------
    async def pin_version(self, holder: str, name: str, version: int, expires_us: int) -> None:
        await self._db.execute(
            "INSERT INTO version_pins (holder, model_name, version, expires_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (holder) DO UPDATE SET version = excluded.version, expires_at = excluded.expires_at",
            holder,
            name,
            version,
            expires_us,
        )

    async def refresh_pins(self, holders: Sequence[str], expires_us: int) -> None:
        for holder in holders:
            await self._db.execute("UPDATE version_pins SET expires_at = $2 WHERE holder = $1", holder, expires_us)

    async def unpin(self, holder: str) -> None:
        await self._db.execute("DELETE FROM version_pins WHERE holder = $1", holder)

    async def prune_versions(self, name: str) -> list[int]:
        now = now_us()
        async with self._db.transaction() as tx:
            row = await tx.fetchrow(
                "SELECT serving_policy, keep_training_checkpoints, keep_versions FROM models WHERE name = $1", name
            )
            if row is None:
                raise _model_not_found(name)
            keep_checkpoints, keep_versions = int(row["keep_training_checkpoints"]), int(row["keep_versions"])
            if keep_checkpoints < 0 and keep_versions <= 0:
                return []
            versions = await tx.fetch(
                "SELECT version, source, promoted, retired FROM model_versions WHERE model_name = $1 "
                "ORDER BY version DESC",
                name,
            )
            # Never pruned: labelled versions, what the serving policy serves, what an unfinished job, an open
            # Train session or a PredictBatch stream (on any replica) uses.
            protected = {r["version"] for r in await tx.fetch("SELECT version FROM labels WHERE model_name = $1", name)}
            protected |= {
                r["version"]
                for r in await tx.fetch(
                    "SELECT version FROM version_pins WHERE model_name = $1 AND expires_at > $2", name, now
                )
            }
            protected |= {
                r["model_version"]
                for r in await tx.fetch(
                    "SELECT DISTINCT model_version FROM jobs WHERE model_name = $1 AND state IN ('QUEUED', 'RUNNING')",
                    name,
                )
            }
            policy = ServingPolicy.parse(row["serving_policy"])
            if policy.version is not None:
                protected.add(policy.version)
            elif policy.label is None:
                served = next(
                    (
                        r["version"]
                        for r in versions
                        if (r["source"] != "training" or r["promoted"]) and not r["retired"]
                    ),
                    None,
                )
                protected.add(served)
            victims: set[int] = set()
            if keep_checkpoints >= 0:
                checkpoints = [r["version"] for r in versions if r["source"] == "training" and not r["promoted"]]
                victims |= set(checkpoints[keep_checkpoints:])
            if keep_versions > 0:
                victims |= {r["version"] for r in versions[keep_versions:]}
            victims -= protected
            if not victims:
                return []
            await _lock_model(tx, name, now)
            for version in sorted(victims):
                # Queued for the blob GC sweeper in the same transaction, as delete_version does.
                await tx.execute(
                    "INSERT INTO blob_gc (blob_key, not_before) "
                    "SELECT blob_key, CAST($3 AS BIGINT) FROM model_versions WHERE model_name = $1 AND version = $2 "
                    "ON CONFLICT (blob_key) DO UPDATE SET not_before = excluded.not_before",
                    name,
                    version,
                    now,
                )
                await tx.execute("DELETE FROM model_versions WHERE model_name = $1 AND version = $2", name, version)
        return sorted(victims)

    # --- helpers -------------------------------------------------------------------------------------------
    async def _versions(self, where: str, *args: object) -> list[ModelVersion]:
        """Versions of one model matching ``where`` (whose ``$1`` is the model name), with their labels."""
        rows = await self._db.fetch(f"SELECT {_VERSION_COLUMNS} FROM model_versions {where}", *args)
        if not rows:
            return []
        numbers = [row["version"] for row in rows]
        label_rows = await self._db.fetch(
            "SELECT version, label FROM labels WHERE model_name = $1 AND version >= $2 AND version <= $3 "
            "ORDER BY label",
            args[0],
            min(numbers),
            max(numbers),
        )
        labels: dict[int, list[str]] = {}
        for row in label_rows:
            labels.setdefault(row["version"], []).append(row["label"])
        return [_version_from_row(row, tuple(labels.get(row["version"], ()))) for row in rows]


def _model_not_found(name: str) -> NotFound:
    return NotFound(f"model {name!r} not found")


async def _raise_not_found(db: SqlConnection, name: str, message: str) -> NoReturn:
    """Raise the most precise NotFound: the model itself, or ``message`` about something inside it."""
    if await db.fetchrow("SELECT 1 AS one FROM models WHERE name = $1", name) is None:
        raise _model_not_found(name)
    raise NotFound(message)


async def _lock_model(tx: SqlConnection, name: str, now: int) -> None:
    """Touch the model row: records the change and, on PostgreSQL, locks the model until commit."""
    if await tx.fetchrow("UPDATE models SET updated_at = $2 WHERE name = $1 RETURNING name", name, now) is None:
        raise _model_not_found(name)


async def _policy_of(tx: SqlConnection, name: str) -> ServingPolicy:
    row = await tx.fetchrow("SELECT serving_policy FROM models WHERE name = $1", name)
    if row is None:
        raise _model_not_found(name)
    return ServingPolicy.parse(row["serving_policy"])


async def _check_policy_target(tx: SqlConnection, name: str, policy: ServingPolicy) -> None:
    """A label or version policy must name something that exists, so it never serves NOT_FOUND from the start."""
    if policy.label is not None:
        found = await tx.fetchrow(
            "SELECT 1 AS one FROM labels WHERE model_name = $1 AND label = $2", name, policy.label
        )
        if found is None:
            raise FailedPrecondition(f"serving policy {policy}: model {name!r} has no label {policy.label!r}")
    elif policy.version is not None:
        found = await tx.fetchrow(
            "SELECT 1 AS one FROM model_versions WHERE model_name = $1 AND version = $2", name, policy.version
        )
        if found is None:
            raise FailedPrecondition(f"serving policy {policy}: model {name!r} has no version {policy.version}")


async def _labels_of(tx: SqlConnection, name: str, version: int) -> list[str]:
    rows = await tx.fetch(
        "SELECT label FROM labels WHERE model_name = $1 AND version = $2 ORDER BY label", name, version
    )
    return [row["label"] for row in rows]


def _model_from_row(row: Row, labels: dict[str, int]) -> Model:
    return Model(
        name=row["name"],
        description=row["description"],
        created_at=from_us(row["created_at"]),
        updated_at=from_us(row["updated_at"]),
        latest_version=row["latest_version"],
        version_count=row["version_count"],
        labels=labels,
        serving_policy=ServingPolicy.parse(row["serving_policy"]),
        served_version=row["served_version"],
        retention=RetentionPolicy(
            keep_training_checkpoints=None
            if row["keep_training_checkpoints"] < 0
            else int(row["keep_training_checkpoints"]),
            keep_versions=int(row["keep_versions"]) or None,
        ),
    )


def _version_from_row(row: Row, labels: Sequence[str]) -> ModelVersion:
    return ModelVersion(
        model_name=row["model_name"],
        version=row["version"],
        format=ModelFormat(row["format"]),
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        blob_key=row["blob_key"],
        signature=Signature.from_json(json.loads(row["signature"])),
        source=VersionSource(row["source"]),
        created_at=from_us(row["created_at"]),
        description=row["description"],
        feature_names=tuple(json.loads(row["feature_names"])),
        metadata=json.loads(row["metadata"]),
        parent_version=row["parent_version"],
        training_session_id=row["training_session_id"],
        labels=tuple(labels),
        class_names=tuple(json.loads(row["class_names"])),
        frozen_graph=None
        if row["frozen_graph"] is None
        else FrozenGraphNodes.from_json(json.loads(row["frozen_graph"])),
        image_scaling=ImageScaling(row["image_scaling"]),
        promoted=bool(row["promoted"]),
        retired=bool(row["retired"]),
    )
