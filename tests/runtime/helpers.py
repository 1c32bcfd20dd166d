"""Helpers for the runtime tests: version records for artifacts, and loading them as servables."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path

from tt_server.registry.artifacts import ArchiveLimits
from tt_server.runtime.loader import ARTIFACT_SUFFIX, Loader
from tt_server.runtime.servable import Servable
from tt_server.types import ModelFormat, ModelVersion, Signature, VersionSource

LIMITS = ArchiveLimits(max_members=1000, max_unpacked_bytes=1 << 30, max_ratio=1000.0)


def version_of(
    path: Path, fmt: ModelFormat, signature: Signature, name: str = "m", number: int = 1, blob_key: str = ""
) -> ModelVersion:
    """The record the registry would have written for ``path``."""
    data = path.read_bytes()
    return ModelVersion(
        model_name=name,
        version=number,
        format=fmt,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        blob_key=blob_key or f"models/{name}/{number}",
        signature=signature,
        source=VersionSource.UPLOAD,
        created_at=datetime.now(UTC),
    )


def load(path: Path, fmt: ModelFormat, signature: Signature, work: Path, name: str = "m") -> Servable:
    """Load ``path`` the way the model manager does: a copy named by format, in a scratch directory."""
    work.mkdir(parents=True, exist_ok=True)
    artifact = work / f"{name}-{path.name}{ARTIFACT_SUFFIX[fmt]}"
    shutil.copyfile(path, artifact)
    return Loader(version_of(path, fmt, signature, name), artifact, work / f"{name}-unpacked", LIMITS).load()
