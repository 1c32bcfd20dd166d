"""MetadataStore: models, versions, labels, version pins and the blob GC table, in a SQL database.

Written once in SQL (``SqlMetadataStore``, ``sql.py``) over either backend (``sqldb.SqlBackend``): PostgreSQL
(``postgres.py``, production) or SQLite (``sqlite.py``, the embedded default); the backend applies the schema
migrations when it opens. Batch jobs live in the same database behind an interface of their own (``jobs.py``).
Errors: unknown things raise ``NotFound``; a lost database connection raises ``Unavailable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tt_server.types import Model, ModelVersion, Page, RetentionPolicy, ServingPolicy


@dataclass(frozen=True, slots=True)
class NewVersion:
    """What the registry hands the store to publish a version; the store assigns the number."""

    version: ModelVersion  # ``version.version`` is ignored; the store allocates the next number
    set_labels: tuple[str, ...] = ()
    model_description: str = ""  # set only when this version creates the model
    # The model's policy when this creates it; for an existing model it must equal the policy (or be None).
    serving_policy: ServingPolicy | None = None


class MetadataStore(Protocol):
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise ``Unavailable`` when the database cannot be reached."""

    # --- models -------------------------------------------------------------------------------------------
    async def list_models(self, page_size: int, page_token: str) -> Page[Model]: ...

    async def get_model(self, name: str) -> Model: ...

    async def delete_model(self, name: str) -> list[str]:
        """Delete the model and all its versions; returns their blob keys, queued in the blob GC table
        in the same transaction."""

    # --- versions ------------------------------------------------------------------------------------------
    async def create_version(self, new: NewVersion) -> ModelVersion:
        """Create the model if new, allocate the next version number (never reused, safe under races),
        insert the version, move ``set_labels`` to it and remove its blob from the GC table, atomically."""

    async def get_version(self, name: str, version: int) -> ModelVersion: ...

    async def get_latest_version(self, name: str) -> ModelVersion: ...

    async def get_labelled_version(self, name: str, label: str) -> ModelVersion: ...

    async def get_served_version(self, name: str) -> ModelVersion:
        """The version the model's serving policy selects (``ServingPolicy``); ``NotFound`` when none does."""

    # --- model settings -----------------------------------------------------------------------------------
    async def set_serving_policy(self, name: str, policy: ServingPolicy) -> ServingPolicy:
        """Replace the policy (its label or version must exist: ``FailedPrecondition``); returns the old one."""

    async def promote_version(self, name: str, version: int) -> ModelVersion:
        """Mark a training checkpoint promoted (no change for other sources); returns the version."""

    async def set_retired(self, name: str, version: int, retired: bool) -> None:
        """Mark a model repository version whose folder was removed (or is back): ``latest`` skips retired ones."""

    async def set_description(self, name: str, description: str) -> None: ...

    async def set_retention(self, name: str, retention: RetentionPolicy) -> None: ...

    async def list_versions(self, name: str, page_size: int, page_token: str) -> Page[ModelVersion]: ...

    async def delete_version(self, name: str, version: int, force: bool) -> str:
        """Delete one version; returns its blob key, queued in the blob GC table in the same transaction.
        Raises ``FailedPrecondition`` when labels point at it and ``force`` is false (with force they go too)."""

    # --- labels ----------------------------------------------------------------------------------------------
    async def set_label(self, name: str, label: str, version: int) -> int | None:
        """Point ``label`` at ``version`` (which must exist); returns the version it pointed at before."""

    async def delete_label(self, name: str, label: str) -> int:
        """Remove a label; returns the version it pointed at."""

    # --- retention ----------------------------------------------------------------------------------------------
    async def pin_version(self, holder: str, name: str, version: int, expires_us: int) -> None:
        """Record that ``holder`` uses the version until ``expires_us`` (refreshed while it lives)."""

    async def refresh_pins(self, holders: Sequence[str], expires_us: int) -> None: ...

    async def unpin(self, holder: str) -> None: ...

    async def prune_versions(self, name: str) -> list[int]:
        """Delete the versions the model's retention policy no longer keeps (never labelled, served, pinned or
        job-used ones), queueing their blobs for the GC, in one transaction; returns their numbers."""

    # --- blob garbage collection (outbox) ----------------------------------------------------------------
    async def add_blob_gc(self, blob_key: str, not_before_us: int) -> None:
        """Record that ``blob_key`` must be deleted after ``not_before_us`` unless a version claims it."""

    async def due_blob_gc(self, now_us: int, limit: int) -> list[str]: ...

    async def remove_blob_gc(self, blob_key: str) -> None: ...
