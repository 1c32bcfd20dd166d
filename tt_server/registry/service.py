"""The model registry: uploads, versions, labels, downloads. Knows nothing of gRPC.

Upload path: header checks -> chunks spooled to a scratch file (size cap, sha256) -> format detection and
safe inspection in a worker thread (reads the signature; nothing is stored if it fails) -> the header's class
names and image scaling checked against that signature -> blob written under a
fresh key that is first recorded in the blob GC table -> one metadata transaction creates the version and clears
that GC entry. A crash or cancellation anywhere before the commit leaves at most a GC entry, which the sweeper
(`collect_garbage`) deletes later; so no version row ever points at a missing blob and no blob outlives its row.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tt_server.config import Settings
from tt_server.errors import FieldViolation, InvalidArgument, NotFound, ResourceExhausted
from tt_server.events import EventBus
from tt_server.registry.artifacts import ArchiveLimits, detect_format
from tt_server.registry.frozen_graph import INPUT_FIELD, NODE_NAME, OUTPUT_FIELD
from tt_server.registry.inspect import inspect_artifact
from tt_server.storage.blobs import BlobStore
from tt_server.storage.metadata import MetadataStore, NewVersion
from tt_server.storage.outbox import BlobOutbox
from tt_server.storage.pins import VersionPins
from tt_server.types import (
    EventKind,
    FrozenGraphNodes,
    ImageScaling,
    Model,
    ModelFormat,
    ModelRef,
    ModelVersion,
    Page,
    RegistryEvent,
    RetentionPolicy,
    ServingPolicy,
    Signature,
    VersionSource,
    tensor_display_name,
)

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
LABEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_METADATA_BYTES = 64 * 1024
UPLOAD_SCRATCH_PREFIX = "upload-"  # scratch_dir/upload-<hex>: one upload's spooled artifact and unpacked files
UPLOAD_GC_DELAY_US = 3600 * 1_000_000  # an unfinished upload's blob is swept after an hour
MAX_GRAPH_NODES = 256  # input plus output nodes a frozen graph upload may name
# Class names: ImageNet's 1000 (some repeated, e.g. "crane") are the usual upper end; these caps only stop abuse.
MAX_CLASS_NAMES = 100_000
MAX_CLASS_NAME_CHARS = 256
CLASS_NAMES_FIELD = "header.class_names_text"


@dataclass(frozen=True, slots=True)
class UploadSpec:
    """The header of an upload, after protobuf conversion."""

    model_name: str
    format: ModelFormat | None = None
    description: str = ""
    feature_names: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    expected_size: int | None = None
    expected_sha256: str | None = None
    frozen_graph: FrozenGraphNodes | None = None  # given for frozen graphs only
    class_names: tuple[str, ...] = ()  # the labels file's lines, trailing blank ones dropped
    image_scaling: ImageScaling = ImageScaling.RAW
    serving_policy: ServingPolicy | None = None  # the model's, when the upload creates it


def check_model_name(name: str, field_name: str = "name") -> None:
    if not MODEL_NAME.match(name):
        raise InvalidArgument.field(
            field_name,
            f"invalid model name {name[:80]!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )


def check_label(label: str, field_name: str = "label") -> None:
    if not LABEL_NAME.match(label):
        raise InvalidArgument.field(
            field_name,
            f"invalid label {label[:80]!r}: use 1-63 lowercase letters, digits, '_' or '-', starting with a letter",
        )


def check_serving_policy(policy: ServingPolicy, field_name: str = "policy") -> None:
    if policy.label is not None:
        check_label(policy.label, f"{field_name}.label")
    if policy.version is not None and policy.version <= 0:
        raise InvalidArgument.field(f"{field_name}.version", "versions are numbered from 1")


def _now_us() -> int:
    return time.time_ns() // 1000


class Registry:
    def __init__(
        self,
        metadata: MetadataStore,
        blobs: BlobStore,
        events: EventBus,
        settings: Settings,
        executor: Executor,
    ) -> None:
        self._metadata = metadata
        self._blobs = blobs
        self._outbox = BlobOutbox(blobs, metadata, delay_us=UPLOAD_GC_DELAY_US)
        self._events = events
        self._settings = settings
        self._executor = executor
        self._limits = ArchiveLimits(
            max_members=settings.max_archive_members,
            max_unpacked_bytes=settings.max_unpacked_bytes,
            max_ratio=settings.max_compression_ratio,
        )
        self._allowed_custom = frozenset(settings.allowed_custom_objects)
        self.pins = VersionPins(metadata)  # versions open Train sessions use; retention keeps them
        # Set by the model repository after each scan: entries it refused, path -> why (shown by ListModels).
        self.repository_problems: dict[str, str] = {}

    # --- upload -------------------------------------------------------------------------------------------
    async def upload(
        self, spec: UploadSpec, chunks: AsyncIterator[bytes], source: VersionSource = VersionSource.UPLOAD
    ) -> tuple[ModelVersion, bool]:
        """Store a new version from streamed bytes (``source``: an upload, or the model repository); returns it
        and whether the model was created."""
        self._check_upload_spec(spec)
        loop = asyncio.get_running_loop()
        scratch = self._settings.scratch_dir
        scratch.mkdir(parents=True, exist_ok=True)
        work = scratch / f"{UPLOAD_SCRATCH_PREFIX}{uuid.uuid4().hex}"
        work.mkdir()
        inspecting: concurrent.futures.Future[tuple[ModelFormat, Signature]] | None = None
        try:
            artifact = work / "artifact"
            size, sha256 = await self._spool(chunks, artifact)
            if spec.expected_size is not None and size != spec.expected_size:
                raise InvalidArgument.field(
                    "header.expected_size_bytes", f"declared {spec.expected_size} bytes, received {size}"
                )
            if spec.expected_sha256 is not None and sha256 != spec.expected_sha256:
                raise InvalidArgument.field(
                    "header.expected_sha256", f"declared {spec.expected_sha256}, received data has {sha256}"
                )
            if size == 0:
                raise InvalidArgument.field("chunk", "the upload carried no data")
            # The nodes are the only sign of a frozen graph: a GraphDef has no magic bytes.
            declared = ModelFormat.FROZEN_GRAPH if spec.format is None and spec.frozen_graph else spec.format
            inspecting = self._executor.submit(self._inspect, artifact, declared, spec.frozen_graph, work / "unpacked")
            fmt, signature = await asyncio.wrap_future(inspecting)
            self._check_feature_names(spec.feature_names, signature)
            _check_class_names(spec.class_names, signature)
            _check_image_scaling(spec.image_scaling, signature)
            version = await self._publish(spec, artifact, fmt, size, sha256, signature, source=source)
        finally:
            # Shielded: a call cancelled (again) while cleaning up must not stop the clean-up, and an inspection
            # still running in its thread (cancelling the call cannot stop it) is waited for before the removal.
            await asyncio.shield(loop.run_in_executor(None, _discard_scratch, work, inspecting))
        log.info(
            "model version uploaded",
            extra={
                "model": version.model_name,
                "version": version.version,
                "bytes": size,
                "format": fmt.value,
            },
        )
        await self._prune_quietly(version.model_name)
        return version, version.version == 1

    def _check_upload_spec(self, spec: UploadSpec) -> None:
        violations: list[FieldViolation] = []

        def check(ok: bool, field_name: str, description: str) -> None:
            if not ok:
                violations.append(FieldViolation(field_name, description))

        check(
            bool(MODEL_NAME.match(spec.model_name)),
            "header.model_name",
            f"invalid model name {spec.model_name[:80]!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
        for i, label in enumerate(spec.labels):
            check(bool(LABEL_NAME.match(label)), f"header.labels[{i}]", f"invalid label {label[:80]!r}")
        check(len(set(spec.labels)) == len(spec.labels), "header.labels", "labels repeat")
        for i, name in enumerate(spec.feature_names):
            check(bool(name) and len(name) <= 256, f"header.feature_names[{i}]", "must be 1-256 characters")
        check(len(set(spec.feature_names)) == len(spec.feature_names), "header.feature_names", "names repeat")
        metadata_size = sum(len(k) + len(v) for k, v in spec.metadata.items()) + len(spec.description)
        check(metadata_size <= MAX_METADATA_BYTES, "header.metadata", f"over {MAX_METADATA_BYTES} bytes")
        if spec.expected_sha256 is not None:
            check(bool(SHA256_HEX.match(spec.expected_sha256)), "header.expected_sha256", "not a hex SHA-256")
        if spec.serving_policy is not None and spec.serving_policy.label is not None:
            check(
                bool(LABEL_NAME.match(spec.serving_policy.label)),
                "header.serving_policy.label",
                f"invalid label {spec.serving_policy.label[:80]!r}",
            )
        if spec.serving_policy is not None and spec.serving_policy.version is not None:
            check(spec.serving_policy.version > 0, "header.serving_policy.version", "versions are numbered from 1")
        violations += _frozen_graph_violations(spec)
        violations += _class_name_violations(spec.class_names)
        if violations:
            raise InvalidArgument(f"{violations[0].field}: {violations[0].description}", violations)
        if spec.expected_size is not None and spec.expected_size > self._settings.max_upload_bytes:
            raise ResourceExhausted(
                f"the artifact ({spec.expected_size} bytes) is over the upload limit of "
                f"{self._settings.max_upload_bytes} bytes"
            )

    async def _spool(self, chunks: AsyncIterator[bytes], path: Path) -> tuple[int, str]:
        """Write the stream to ``path``; enforce the upload cap as bytes arrive, not after."""
        digest = hashlib.sha256()
        size = 0
        cap = self._settings.max_upload_bytes
        with path.open("wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > cap:
                    raise ResourceExhausted(f"the artifact is over the upload limit of {cap} bytes")
                digest.update(chunk)
                # Small writes go to the page cache; not worth a thread hop per chunk.
                out.write(chunk)
        return size, digest.hexdigest()

    def _inspect(
        self, artifact: Path, declared: ModelFormat | None, nodes: FrozenGraphNodes | None, work: Path
    ) -> tuple[ModelFormat, Signature]:
        fmt = detect_format(artifact, declared)
        work.mkdir(exist_ok=True)
        signature = inspect_artifact(
            artifact,
            fmt,
            work,
            self._limits,
            self._allowed_custom,
            nodes,
            allow_non_finite=self._settings.allow_non_finite_weights,
        )
        return fmt, signature

    @staticmethod
    def _check_feature_names(names: tuple[str, ...], signature: Signature) -> None:
        if not names or len(signature.inputs) != 1:
            return
        shape = signature.inputs[0].shape
        if len(shape) == 2 and shape[1] >= 0 and shape[1] != len(names):
            raise InvalidArgument.field(
                "header.feature_names",
                f"{len(names)} names given but the input {signature.inputs[0].name!r} has {shape[1]} features",
            )

    async def _publish(
        self,
        spec: UploadSpec,
        artifact: Path,
        fmt: ModelFormat,
        size: int,
        sha256: str,
        signature: Signature,
        source: VersionSource = VersionSource.UPLOAD,
        parent_version: int | None = None,
        training_session_id: str | None = None,
    ) -> ModelVersion:
        blob_key = f"models/{spec.model_name}/{uuid.uuid4().hex}"
        # Reserved in the blob GC table first: a crash or cancellation before the commit leaves the sweeper a
        # GC entry, never an orphan blob; create_version claims the blob in the same transaction.
        async with self._outbox.stage(blob_key) as staged:
            await self._blobs.put_file(blob_key, artifact)
            draft = ModelVersion(
                model_name=spec.model_name,
                version=0,
                format=fmt,
                sha256=sha256,
                size_bytes=size,
                blob_key=blob_key,
                signature=signature,
                source=source,
                created_at=datetime.now(UTC),
                description=spec.description,
                feature_names=spec.feature_names,
                metadata=spec.metadata,
                parent_version=parent_version,
                training_session_id=training_session_id,
                class_names=spec.class_names,
                frozen_graph=spec.frozen_graph if fmt is ModelFormat.FROZEN_GRAPH else None,
                image_scaling=spec.image_scaling,
            )
            version = await self._metadata.create_version(
                NewVersion(
                    draft,
                    set_labels=spec.labels,
                    # Training never names the model's description (a deleted model is recreated without one).
                    model_description=spec.description if source is not VersionSource.TRAINING else "",
                    serving_policy=spec.serving_policy,
                )
            )
            staged.claimed()
        await self._events.publish(RegistryEvent(EventKind.VERSION_CREATED, version.model_name, version.version))
        for label in spec.labels:
            await self._events.publish(RegistryEvent(EventKind.LABEL_MOVED, version.model_name, version.version, label))
        return version

    async def publish_trained(
        self,
        model_name: str,
        artifact: Path,
        signature: Signature,
        *,
        parent_version: int | None,
        session_id: str,
        metadata: dict[str, str],
        labels: tuple[str, ...] = (),
        description: str = "",
        feature_names: tuple[str, ...] = (),
        pin: str | None = None,
    ) -> ModelVersion:
        """Publish a training checkpoint (a .keras file the trainer wrote) as a new version, moving ``labels``
        to it, with the same guarantees and events as an upload.

        The artifact is not inspected again: the server wrote it from a model that passed inspection, and
        training changes weights, never the architecture, so the parent's ``signature`` still holds, and so do
        its class names and image scaling, which the checkpoint inherits. ``pin``: a holder of ``pins`` moved to
        the new version before retention prunes, so a session's newest checkpoint is never pruned under it.
        """
        class_names: tuple[str, ...] = ()
        image_scaling = ImageScaling.RAW
        if parent_version is not None:
            try:
                parent = await self._metadata.get_version(model_name, parent_version)
            except NotFound:
                pass  # deleted while training: nothing left to inherit
            else:
                class_names, image_scaling = parent.class_names, parent.image_scaling
        spec = UploadSpec(
            model_name=model_name,
            format=ModelFormat.KERAS,
            description=description,
            feature_names=feature_names,
            metadata=metadata,
            labels=labels,
            class_names=class_names,
            image_scaling=image_scaling,
        )
        self._check_upload_spec(spec)

        def digest() -> tuple[int, str]:
            sha = hashlib.sha256()
            with artifact.open("rb") as f:
                while chunk := f.read(1 << 20):
                    sha.update(chunk)
            return artifact.stat().st_size, sha.hexdigest()

        size, sha256 = await asyncio.to_thread(digest)
        version = await self._publish(
            spec,
            artifact,
            ModelFormat.KERAS,
            size,
            sha256,
            signature,
            source=VersionSource.TRAINING,
            parent_version=parent_version,
            training_session_id=session_id,
        )
        log.info(
            "model version published by training",
            extra={"model": model_name, "version": version.version, "parent": parent_version, "session": session_id},
        )
        if pin is not None:
            await self.pins.pin(model_name, version.version, pin)
        await self._prune_quietly(model_name)
        return version

    # --- reads -----------------------------------------------------------------------------------------------
    async def list_models(self, page_size: int, page_token: str) -> Page[Model]:
        return await self._metadata.list_models(page_size, page_token)

    async def get_model(self, name: str) -> Model:
        check_model_name(name)
        return await self._metadata.get_model(name)

    async def list_versions(self, name: str, page_size: int, page_token: str) -> Page[ModelVersion]:
        check_model_name(name)
        await self._metadata.get_model(name)  # NOT_FOUND for an unknown model, not an empty page
        return await self._metadata.list_versions(name, page_size, page_token)

    async def resolve(self, ref: ModelRef) -> ModelVersion:
        """The version a reference selects: explicit version, label, or what the model's serving policy says."""
        check_model_name(ref.name, "model.name")
        if ref.version is not None:
            return await self._metadata.get_version(ref.name, ref.version)
        if ref.label is not None:
            return await self._metadata.get_labelled_version(ref.name, ref.label)
        return await self._metadata.get_served_version(ref.name)

    async def served_version(self, name: str) -> int | None:
        """The version the serving policy selects now, None when none does."""
        try:
            return (await self._metadata.get_served_version(name)).version
        except NotFound:
            await self._metadata.get_model(name)  # an unknown model stays NOT_FOUND
            return None

    # --- model settings -------------------------------------------------------------------------------------
    async def set_serving_policy(self, name: str, policy: ServingPolicy) -> tuple[ServingPolicy, int | None]:
        """Replace the model's serving policy; returns the previous one and the version now served."""
        check_model_name(name)
        check_serving_policy(policy)
        previous = await self._metadata.set_serving_policy(name, policy)
        await self._events.publish(RegistryEvent(EventKind.POLICY_CHANGED, name))
        log.info("serving policy set", extra={"model": name, "policy": str(policy), "previous": str(previous)})
        return previous, await self.served_version(name)

    async def promote(self, name: str, version: int) -> tuple[ModelVersion, int | None]:
        """Let the ``latest`` policy select a training checkpoint; returns it and the version now served."""
        check_model_name(name)
        if version <= 0:
            raise InvalidArgument.field("version", "versions are numbered from 1")
        promoted = await self._metadata.promote_version(name, version)
        await self._events.publish(RegistryEvent(EventKind.POLICY_CHANGED, name, version))
        return promoted, await self.served_version(name)

    async def set_retired(self, name: str, version: int, retired: bool) -> None:
        """Retire a repository version whose folder was removed (``latest`` skips it), or bring it back."""
        await self._metadata.set_retired(name, version, retired)
        await self._events.publish(RegistryEvent(EventKind.POLICY_CHANGED, name, version))

    async def set_description(self, name: str, description: str) -> Model:
        check_model_name(name)
        if len(description) > MAX_METADATA_BYTES:
            raise InvalidArgument.field("description", f"over {MAX_METADATA_BYTES} characters")
        await self._metadata.set_description(name, description)
        return await self._metadata.get_model(name)

    async def set_retention(self, name: str, retention: RetentionPolicy) -> tuple[RetentionPolicy, list[int]]:
        """Replace how many versions are kept and prune now; returns the policy and the pruned versions."""
        check_model_name(name)
        await self._metadata.set_retention(name, retention)
        return retention, await self.prune(name)

    async def prune(self, name: str) -> list[int]:
        """Delete the versions the model's retention policy no longer keeps; their blobs go through the GC."""
        pruned = await self._metadata.prune_versions(name)
        for version in pruned:
            await self._events.publish(RegistryEvent(EventKind.VERSION_DELETED, name, version))
        if pruned:
            log.info("model versions pruned", extra={"model": name, "versions": pruned})
        return pruned

    async def _prune_quietly(self, name: str) -> None:
        """Retention after a new version: its failure must not fail the upload or checkpoint that ran it."""
        try:
            await self.prune(name)
        except Exception:
            log.warning(
                "pruning versions failed; the next new version tries again", extra={"model": name}, exc_info=True
            )

    async def download(self, ref: ModelRef) -> tuple[ModelVersion, AsyncIterator[bytes]]:
        version = await self.resolve(ref)
        return version, self._blobs.get_stream(version.blob_key)

    # --- deletes and labels ------------------------------------------------------------------------------
    async def delete_model(self, name: str) -> int:
        check_model_name(name)
        blob_keys = await self._metadata.delete_model(name)
        for key in blob_keys:
            await self._outbox.discard(key)
        await self._events.publish(RegistryEvent(EventKind.MODEL_DELETED, name))
        return len(blob_keys)

    async def delete_version(self, name: str, version: int, force: bool) -> list[str]:
        check_model_name(name)
        if version <= 0:
            raise InvalidArgument.field("version", "versions are numbered from 1")
        labels = list((await self._metadata.get_version(name, version)).labels)
        blob_key = await self._metadata.delete_version(name, version, force)
        await self._outbox.discard(blob_key)
        await self._events.publish(RegistryEvent(EventKind.VERSION_DELETED, name, version))
        for label in labels:
            await self._events.publish(RegistryEvent(EventKind.LABEL_DELETED, name, version, label))
        return sorted(labels)

    async def set_label(self, name: str, label: str, version: int) -> int | None:
        check_model_name(name)
        check_label(label)
        if version <= 0:
            raise InvalidArgument.field("version", "versions are numbered from 1")
        previous = await self._metadata.set_label(name, label, version)
        await self._events.publish(RegistryEvent(EventKind.LABEL_MOVED, name, version, label))
        return previous

    async def delete_label(self, name: str, label: str) -> int:
        check_model_name(name)
        check_label(label)
        previous = await self._metadata.delete_label(name, label)
        await self._events.publish(RegistryEvent(EventKind.LABEL_DELETED, name, previous, label))
        return previous

    # --- maintenance -----------------------------------------------------------------------------------
    async def sweep_leftovers(self) -> tuple[int, int]:
        """Remove what killed processes left: stale upload scratch folders and unfinished blob writes."""
        folders = await asyncio.to_thread(
            sweep_scratch, self._settings.scratch_dir, self._settings.scratch_max_age_seconds
        )
        writes = await self._blobs.abort_stale_writes(self._settings.stale_write_seconds)
        if folders or writes:
            log.info("removed leftovers", extra={"scratch_folders": folders, "unfinished_blob_writes": writes})
        return folders, writes

    async def collect_garbage(self, limit: int = 100) -> int:
        """Delete blobs whose GC entry is due (deleted versions, abandoned uploads); returns how many."""
        keys = await self._metadata.due_blob_gc(_now_us(), limit)
        for key in keys:
            await self._blobs.delete(key)
            await self._metadata.remove_blob_gc(key)
        return len(keys)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _discard_scratch(work: Path, inspecting: concurrent.futures.Future[Any] | None) -> None:
    if inspecting is not None:
        concurrent.futures.wait([inspecting])
    _remove_tree(work)


def sweep_scratch(scratch: Path, max_age_seconds: float) -> int:
    """Remove upload scratch folders nothing has written to for ``max_age_seconds`` (left by a killed process);
    returns how many. The age spares uploads in progress in sibling processes sharing the data directory."""
    if not scratch.is_dir():
        return 0
    cutoff = time.time() - max_age_seconds
    removed = 0
    for work in scratch.glob(f"{UPLOAD_SCRATCH_PREFIX}*"):
        try:
            newest = max((p.stat().st_mtime for p in (work, *work.rglob("*"))), default=0.0)
        except OSError:
            continue  # removed meanwhile
        if newest < cutoff:
            _remove_tree(work)
            removed += 1
    return removed


def _frozen_graph_violations(spec: UploadSpec) -> list[FieldViolation]:
    """Header rules for frozen graph nodes: given exactly for frozen graphs, well formed, not too many, and
    naming distinct signature inputs and outputs (``x`` and ``x:0`` are the same tensor)."""
    nodes = spec.frozen_graph
    if nodes is None:
        if spec.format is ModelFormat.FROZEN_GRAPH:
            return [FieldViolation("header.frozen_graph", "a frozen graph needs its input and output node names")]
        return []
    if spec.format not in (None, ModelFormat.FROZEN_GRAPH):
        return [FieldViolation("header.frozen_graph", f"node names are for frozen graphs, not {spec.format.name}")]
    violations: list[FieldViolation] = []
    for path, names in ((INPUT_FIELD, nodes.inputs), (OUTPUT_FIELD, nodes.outputs)):
        if not names:
            violations.append(FieldViolation(path, "name at least one node"))
        seen: set[str] = set()
        for i, name in enumerate(names):
            if not NODE_NAME.match(name):
                violations.append(FieldViolation(f"{path}[{i}]", f"{name[:80]!r} is not a node name ('x' or 'x:1')"))
            elif tensor_display_name(name) in seen:
                violations.append(FieldViolation(f"{path}[{i}]", f"{name!r} is named twice"))
            seen.add(tensor_display_name(name))
    if len(nodes.inputs) + len(nodes.outputs) > MAX_GRAPH_NODES:
        violations.append(FieldViolation("header.frozen_graph", f"more than {MAX_GRAPH_NODES} nodes named"))
    return violations


def _class_name_violations(names: tuple[str, ...]) -> list[FieldViolation]:
    if len(names) > MAX_CLASS_NAMES:
        return [FieldViolation(CLASS_NAMES_FIELD, f"{len(names)} class names; at most {MAX_CLASS_NAMES}")]
    # Repeated names are allowed: real labels files have them (ImageNet's "crane" is a bird and a machine).
    for line, name in enumerate(names, start=1):
        if not name:
            return [FieldViolation(CLASS_NAMES_FIELD, f"line {line} is empty; class {line - 1} needs a name")]
        if len(name) > MAX_CLASS_NAME_CHARS:
            return [FieldViolation(CLASS_NAMES_FIELD, f"line {line} is over {MAX_CLASS_NAME_CHARS} characters")]
    return []


def _check_class_names(names: tuple[str, ...], signature: Signature) -> None:
    """The names must fit the first output when its width is known: one per column, or two for a single
    sigmoid column. Other outputs are checked when ``Predict`` classifies them."""
    if not names or not signature.outputs:
        return
    first = signature.outputs[0]
    if len(first.shape) != 2 or first.shape[1] < 0:
        return
    width = first.shape[1]
    if width != len(names) and not (width == 1 and len(names) == 2):
        raise InvalidArgument.field(
            CLASS_NAMES_FIELD,
            f"{len(names)} class names given but the output {first.name!r} has {width} values per row",
        )


def _check_image_scaling(scaling: ImageScaling, signature: Signature) -> None:
    """Scaling pixels to 0..1 or -1..1 needs an image input whose dtype can hold fractions."""
    if scaling is ImageScaling.RAW:
        return
    if not any(spec.image_shape() and spec.dtype.value.startswith("float") for spec in signature.inputs):
        inputs = ", ".join(f"{s.name} {s.dtype.value}{list(s.shape)}" for s in signature.inputs)
        raise InvalidArgument.field(
            "header.image_scaling",
            f"scaling pixels needs an image input of a float dtype, [-1, H, W, C] with C 1, 3 or 4; the model's "
            f"inputs are: {inputs}",
        )
