"""Helpers for the runtime tests: version records for artifacts, and loading them as servables."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import keras

from tests.models import MLP_SIGNATURE
from tt_server.formats.artifacts import ARTIFACT_SUFFIX, ArchiveLimits
from tt_server.runtime.loader import Loader
from tt_server.runtime.servable import Servable
from tt_server.storage.blobs import BlobStore
from tt_server.storage.metadata import MetadataStore, NewVersion
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


def constant_model(value: float) -> keras.Model:
    """The MLP's signature ("features" (4,) -> "score" (1,)), answering ``value`` for every row: a version
    that can be recognised by its outputs."""
    inputs = keras.Input(shape=(4,), name="features")
    score = keras.layers.Dense(
        1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(value), name="score"
    )(inputs)
    return keras.Model(inputs, score)


async def publish(
    metadata: MetadataStore,
    blobs: BlobStore,
    path: Path,
    name: str = "m",
    fmt: ModelFormat = ModelFormat.KERAS,
    signature: Signature = MLP_SIGNATURE,
    labels: tuple[str, ...] = (),
) -> ModelVersion:
    """Store ``path`` as the next version of ``name``, as the registry does after an upload."""
    key = f"models/{name}/{uuid.uuid4().hex}"
    await blobs.put_file(key, path)
    draft = version_of(path, fmt, signature, name, 0, blob_key=key)
    return await metadata.create_version(NewVersion(draft, set_labels=labels))
