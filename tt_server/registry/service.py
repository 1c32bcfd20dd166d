"""The model registry: uploads, versions, labels, downloads. Knows nothing of gRPC.

Upload path: header checks -> chunks spooled to a scratch file (size cap, sha256) -> format detection and
safe inspection in a worker thread (reads the signature; nothing is stored if it fails) -> the header's class
names and image scaling checked against that signature -> blob written under a
fresh key that is first recorded in the blob GC table -> one metadata transaction creates the version and clears
that GC entry. A crash or cancellation anywhere before the commit leaves at most a GC entry, which the sweeper
(``sweeper.Sweeper.collect_garbage``) deletes later; so no version row ever points at a missing blob and no blob
outlives its row. The header's rules live in ``header``, the naming rules in ``names``.

Each call that concerns one model sets ``logs.served_model`` to it (and to the version it names, selected or
created), as inference does, so the access log says which model a registry call touched whatever the transport.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tt_server.config import Settings
from tt_server.errors import InvalidArgument, NotFound, ResourceExhausted
from tt_server.events import EventBus
from tt_server.formats.artifacts import ArchiveLimits, detect_format
from tt_server.formats.inspect import inspect_artifact
from tt_server.logs import served_model
from tt_server.registry.header import MAX_METADATA_BYTES, UploadSpec, check_against_signature, check_upload_spec
from tt_server.registry.names import check_label, check_model_name, check_serving_policy
from tt_server.storage import scratch
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
)

log = logging.getLogger(__name__)

UPLOAD_GC_DELAY_US = 3600 * 1_000_000  # an unfinished upload's blob is swept after an hour


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
        self._limits = ArchiveLimits.from_settings(settings)
        self._allowed_custom = frozenset(settings.allowed_custom_objects)
        self.pins = VersionPins(metadata)  # versions open Train sessions use; retention keeps them
        # Set by the model repository after each scan: entries it refused, path -> why (shown by ListModels).
        self.repository_problems: dict[str, str] = {}

    # --- upload -------------------------------------------------------------------------------------------
    async def upload(
        self, spec: UploadSpec, chunks: AsyncIterator[bytes], source: VersionSource = VersionSource.UPLOAD
    ) -> tuple[ModelVersion, bool]:
        """Store a new version from streamed bytes (``source``: an upload, or the model repository); returns it
        and whether the model was created. Violations name ``spec.*`` (its attributes) and ``artifact`` (the
        bytes); each transport moves them onto its request's fields."""
        check_upload_spec(spec, self._settings.max_upload_bytes)
        served_model.set((spec.model_name, None))  # the access log names the model, then the new version
        loop = asyncio.get_running_loop()
        claimed = scratch.claim(self._settings.scratch_dir / f"{scratch.UPLOAD_PREFIX}{uuid.uuid4().hex}")
        work = claimed.path
        inspecting: concurrent.futures.Future[tuple[ModelFormat, Signature]] | None = None
        try:
            artifact = work / "artifact"
            size, sha256 = await self._spool(chunks, artifact)
            if spec.expected_size is not None and size != spec.expected_size:
                raise InvalidArgument.field(
                    "spec.expected_size", f"declared {spec.expected_size} bytes, received {size}"
                )
            if spec.expected_sha256 is not None and sha256 != spec.expected_sha256:
                raise InvalidArgument.field(
                    "spec.expected_sha256", f"declared {spec.expected_sha256}, received data has {sha256}"
                )
            if size == 0:
                raise InvalidArgument.field("artifact", "the upload carried no data")
            # The nodes are the only sign of a frozen graph: a GraphDef has no magic bytes.
            declared = ModelFormat.FROZEN_GRAPH if spec.format is None and spec.frozen_graph else spec.format
            inspecting = self._executor.submit(self._inspect, artifact, declared, spec.frozen_graph, work / "unpacked")
            fmt, signature = await asyncio.wrap_future(inspecting)
            check_against_signature(spec, signature)
            version = await self._publish(spec, artifact, fmt, size, sha256, signature, source=source)
            served_model.set((version.model_name, version.version))
        finally:
            # Shielded: a call cancelled (again) while cleaning up must not stop the clean-up, and an inspection
            # still running in its thread (cancelling the call cannot stop it) is waited for before the removal.
            await asyncio.shield(loop.run_in_executor(None, discard_scratch, claimed, inspecting))
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
        check_upload_spec(spec, self._settings.max_upload_bytes)

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
        served_model.set((name, None))
        return await self._metadata.get_model(name)

    async def list_versions(self, name: str, page_size: int, page_token: str) -> Page[ModelVersion]:
        check_model_name(name)
        served_model.set((name, None))
        await self._metadata.get_model(name)  # NOT_FOUND for an unknown model, not an empty page
        return await self._metadata.list_versions(name, page_size, page_token)

    async def select_version(self, ref: ModelRef) -> ModelVersion:
        """The version a reference selects: explicit version, label, or what the model's serving policy says."""
        check_model_name(ref.name, "ref.name")
        served_model.set((ref.name, None))  # the access log names the model, then the version selected
        if ref.version is not None:
            selected = await self._metadata.get_version(ref.name, ref.version)
        elif ref.label is not None:
            selected = await self._metadata.get_labelled_version(ref.name, ref.label)
        else:
            selected = await self._metadata.get_served_version(ref.name)
        served_model.set((selected.model_name, selected.version))
        return selected

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
        served_model.set((name, None))
        previous = await self._metadata.set_serving_policy(name, policy)
        await self._events.publish(RegistryEvent(EventKind.POLICY_CHANGED, name))
        log.info("serving policy set", extra={"model": name, "policy": str(policy), "previous": str(previous)})
        return previous, await self.served_version(name)

    async def promote(self, name: str, version: int) -> tuple[ModelVersion, int | None]:
        """Let the ``latest`` policy select a training checkpoint; returns it and the version now served."""
        check_model_name(name)
        if version <= 0:
            raise InvalidArgument.field("version", "versions are numbered from 1")
        served_model.set((name, version))
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
        served_model.set((name, None))
        await self._metadata.set_description(name, description)
        return await self._metadata.get_model(name)

    async def set_retention(self, name: str, retention: RetentionPolicy) -> tuple[RetentionPolicy, list[int]]:
        """Replace how many versions are kept and prune now; returns the policy and the pruned versions."""
        check_model_name(name)
        served_model.set((name, None))
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
        version = await self.select_version(ref)
        return version, self._blobs.get_stream(version.blob_key)

    # --- deletes and labels ------------------------------------------------------------------------------
    async def delete_model(self, name: str) -> int:
        check_model_name(name)
        served_model.set((name, None))
        blob_keys = await self._metadata.delete_model(name)
        for key in blob_keys:
            await self._outbox.discard(key)
        await self._events.publish(RegistryEvent(EventKind.MODEL_DELETED, name))
        return len(blob_keys)

    async def delete_version(self, name: str, version: int, force: bool) -> list[str]:
        check_model_name(name)
        if version <= 0:
            raise InvalidArgument.field("version", "versions are numbered from 1")
        served_model.set((name, version))
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
        served_model.set((name, version))  # the label's new target
        previous = await self._metadata.set_label(name, label, version)
        await self._events.publish(RegistryEvent(EventKind.LABEL_MOVED, name, version, label))
        return previous

    async def delete_label(self, name: str, label: str) -> int:
        check_model_name(name)
        check_label(label)
        served_model.set((name, None))
        previous = await self._metadata.delete_label(name, label)
        served_model.set((name, previous))  # the version the label pointed at
        await self._events.publish(RegistryEvent(EventKind.LABEL_DELETED, name, previous, label))
        return previous


def discard_scratch(work: scratch.ClaimedFolder, inspecting: concurrent.futures.Future[Any] | None) -> None:
    """Remove an upload's scratch once its inspection (if any) has ended, however it ended. Waits with
    ``result()``, not ``concurrent.futures.wait``: a future the executor's ``shutdown(cancel_futures=True)``
    cancelled never notifies ``wait``'s waiters (it is CANCELLED, never CANCELLED_AND_NOTIFIED), which hung a
    stopping server's default executor for good."""
    if inspecting is not None:
        with contextlib.suppress(Exception):  # its outcome is the upload's business; only its end matters here
            inspecting.result()
    work.release()
