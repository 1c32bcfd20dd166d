"""ModelRepository: a folder of models as a source of versions (TF Serving's file-system storage path source).

Layout, as TF Serving's model base paths, one folder per model and one numbered folder per version::

    <root>/<model>/<version>/saved_model.pb + variables/   a SavedModel (packed as .tar.gz for the registry)
    <root>/<model>/<version>/model.keras | model.h5         a Keras file (any one *.keras or *.h5 file)
    <root>/<model>/<version>/<graph>.pb + params.json       a TF1 frozen graph; params.json as TFaaS writes it
                                                            ("inputNode", "outputNode", "labels": "labels.txt")
    <root>/<model>/tensortrigger.json                       optional model config (below)

``tensortrigger.json``: ``{"description": "...", "serving_policy": "latest" | "label:stable" | "version:<n>",
"labels": {"stable": <n>}, "feature_names": [...], "class_names": [...] | "labels.txt", "image_scaling": "unit"}``
where ``<n>`` are the repository's version numbers. A TFaaS ``params.json`` + ``labels.txt`` in the model or
version folder are read as they are.

Each sync imports version folders not yet imported through the registry's upload path (the same safety checks,
NaN/Inf weights included), as versions of source REPOSITORY whose metadata records the repository version and
a sha256 of the folder's files: an unchanged folder never makes a new version, a changed one makes one. Labels
and the serving policy from the config are applied after. A bad folder is logged, counted
(``tt_repository_imports_total{outcome="refused"}``), kept in ``problems`` and skipped; it never stops the server
or the other models. A folder that disappears retires its version: the ``latest`` policy skips it (pins and labels
still reach it) and nothing is deleted; the same folder coming back un-retires it.

``s3://bucket/prefix`` works the same way: each sync first mirrors the prefix into ``<data dir>/model-repository``
(downloading only objects whose ETag changed, removing local files whose object is gone), then imports from the
mirror; problems name the ``s3://`` path. The bucket is read only, never created.

One replica syncs at a time: the sync runs under a lease (a PostgreSQL advisory lock in production; a file lock
in the data folder in embedded mode), and the digest check makes the second replica's pass a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import re
import shutil
import tarfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tt_server import metrics
from tt_server.config import Settings
from tt_server.errors import NotFound, TensorTriggerError
from tt_server.registry.header import UploadSpec
from tt_server.registry.names import MODEL_NAME
from tt_server.registry.service import Registry
from tt_server.storage.factory import make_s3_blob_store
from tt_server.storage.leases import LeaseManager
from tt_server.types import FrozenGraphNodes, ImageScaling, ModelFormat, ModelRef, ServingPolicy, VersionSource

log = logging.getLogger(__name__)

CONFIG_FILE = "tensortrigger.json"
TFAAS_PARAMS = "params.json"
REPOSITORY_VERSION = "repository.version"  # metadata keys recorded on imported versions
REPOSITORY_SHA256 = "repository.sha256"
LEASE_NAME = "tt-model-repository"
_VERSION_DIR = re.compile(r"^[1-9][0-9]{0,17}$")
_CHUNK = 1 << 20


@dataclass(slots=True)
class SyncReport:
    """What one sync did: versions imported (model, repository version, registry version) and refused folders."""

    imported: list[tuple[str, int, int]] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # folder -> why
    models: list[str] = field(default_factory=list)  # every repository model with a version in the registry


@dataclass(slots=True)
class Imported:
    """A registry version imported from a repository version folder."""

    version: int
    digest: str
    retired: bool


class ModelRepository:
    def __init__(self, location: str, registry: Registry, leases: LeaseManager, settings: Settings) -> None:
        """``location``: a folder, or ``s3://bucket/prefix`` (mirrored into the data folder at each sync)."""
        self._location = location.rstrip("/")
        self._s3: S3Mirror | None = None
        if location.startswith("s3://"):
            self._s3 = S3Mirror(location, settings.data_dir / "model-repository", settings)
            self._root = self._s3.local_root
        else:
            self._root = Path(location)
        self._registry = registry
        self._leases = leases
        self._settings = settings
        self.problems: dict[str, str] = {}  # folder -> why it was refused at the last sync
        self._refused: dict[str, str] = {}  # folder -> digest refused: not tried again until its files change

    # --- lifecycle -----------------------------------------------------------------------------------------
    async def sync(self) -> SyncReport:
        """Import what is new, apply the configs; one replica at a time."""
        async with self._exclusive():
            if self._s3 is not None:
                await self._s3.mirror()
            report = await self._sync()
        if self._s3 is not None:  # name what the operator wrote, not the mirror
            local = str(self._root)
            report.refused = {self._location + path.removeprefix(local): why for path, why in report.refused.items()}
        self.problems = dict(report.refused)
        self._registry.repository_problems = dict(report.refused)
        return report

    async def run_forever(self, poll_seconds: float) -> None:
        while True:
            await asyncio.sleep(poll_seconds)
            try:
                await self.sync()
            except Exception:
                log.warning("model repository sync failed; will retry", exc_info=True)

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        lease = await self._leases.acquire(LEASE_NAME, wait=True)
        try:
            if self._settings.database_url:
                yield
            else:
                # Embedded servers sharing a data folder are separate processes: an in-process lease is not enough.
                lock_path = self._settings.data_dir / "model-repository.lock"
                handle = await asyncio.to_thread(_lock_file, lock_path)
                try:
                    yield
                finally:
                    handle.close()  # releases the flock
        finally:
            await lease.release()

    # --- one pass ------------------------------------------------------------------------------------------
    async def _sync(self) -> SyncReport:
        report = SyncReport()
        if not await asyncio.to_thread(self._root.is_dir):
            report.refused[str(self._root)] = "the model repository folder does not exist"
            log.warning("model repository folder missing", extra={"path": str(self._root)})
            return report
        for model_dir in sorted(await asyncio.to_thread(_subdirs, self._root)):
            name = model_dir.name
            if not MODEL_NAME.match(name):
                self._refuse(report, model_dir, name, "not a valid model name")
                continue
            try:
                config = await asyncio.to_thread(_read_config, model_dir)
            except (OSError, ValueError) as e:
                self._refuse(report, model_dir / CONFIG_FILE, name, str(e))
                continue
            imported = await self._imported(name)
            present = await asyncio.to_thread(_version_dirs, model_dir)
            for repo_version, version_dir in present:
                await self._import_version(report, name, repo_version, version_dir, config, imported)
            await self._retire_removed(name, {number for number, _ in present}, imported)
            if imported:
                report.models.append(name)
            try:
                await self._apply_config(name, config, imported)
            except TensorTriggerError as e:
                self._refuse(report, model_dir / CONFIG_FILE, name, e.message)
        return report

    async def _imported(self, name: str) -> dict[int, Imported]:
        """Repository version -> the newest registry version imported from it."""
        found: dict[int, Imported] = {}
        token = ""
        try:
            while True:
                page = await self._registry.list_versions(name, 1000, token)
                for v in page.items:
                    if v.source is VersionSource.REPOSITORY and REPOSITORY_VERSION in v.metadata:
                        repo_version = int(v.metadata[REPOSITORY_VERSION])
                        if repo_version not in found or found[repo_version].version < v.version:
                            found[repo_version] = Imported(v.version, v.metadata.get(REPOSITORY_SHA256, ""), v.retired)
                token = page.next_page_token
                if not token:
                    return found
        except NotFound:
            return found

    async def _import_version(
        self,
        report: SyncReport,
        name: str,
        repo_version: int,
        version_dir: Path,
        config: dict[str, Any],
        imported: dict[int, Imported],
    ) -> None:
        scratch = self._settings.scratch_dir / f"repository-{uuid.uuid4().hex}"
        digest = ""
        try:
            digest = await asyncio.to_thread(_folder_sha256, version_dir)
            known = imported.get(repo_version)
            if known is not None and known.digest == digest:
                if known.retired:  # its folder is back
                    await self._registry.set_retired(name, known.version, False)
                    known.retired = False
                return  # unchanged: never a new version
            if self._refused.get(str(version_dir)) == digest:
                report.refused[str(version_dir)] = self.problems.get(str(version_dir), "refused")
                return  # refused before and unchanged since: not loaded again every poll
            await asyncio.to_thread(scratch.mkdir, parents=True)
            artifact, fmt, nodes, params = await asyncio.to_thread(_artifact, version_dir, scratch, config)
            spec = UploadSpec(
                model_name=name,
                format=fmt,
                description=str(params.get("description", "")),
                feature_names=tuple(params.get("feature_names", ())),
                metadata={REPOSITORY_VERSION: str(repo_version), REPOSITORY_SHA256: digest},
                frozen_graph=nodes,
                class_names=tuple(params.get("class_names", ())),
                image_scaling=ImageScaling(params.get("image_scaling", "raw")),
            )
            version, _ = await self._registry.upload(spec, _file_chunks(artifact), source=VersionSource.REPOSITORY)
        except (TensorTriggerError, OSError, ValueError, KeyError, TypeError) as e:
            message = e.message if isinstance(e, TensorTriggerError) else f"{type(e).__name__}: {e}"
            self._refuse(report, version_dir, name, message)
            if digest:
                self._refused[str(version_dir)] = digest
            return
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        imported[repo_version] = Imported(version.version, digest, False)
        report.imported.append((name, repo_version, version.version))
        metrics.REPOSITORY_IMPORTS.labels(name, "imported").inc()
        log.info(
            "model repository version imported",
            extra={"model": name, "repository_version": repo_version, "version": version.version},
        )

    async def _apply_config(self, name: str, config: dict[str, Any], imported: dict[int, Imported]) -> None:
        if not imported:
            return
        model = await self._registry.get_model(name)
        for label, repo_version in dict(config.get("labels", {})).items():
            target = imported.get(int(repo_version))
            if target is not None and model.labels.get(label) != target.version:
                await self._registry.set_label(name, label, target.version)
        text = config.get("serving_policy")
        if text:
            policy = ServingPolicy.parse(str(text))
            if policy.version is not None:  # the config names repository versions
                target = imported.get(policy.version)
                if target is None:
                    raise ValueError(f"serving policy {policy}: no repository version {policy.version}")
                policy = ServingPolicy(version=target.version)
            if policy != model.serving_policy:
                await self._registry.set_serving_policy(name, policy)

    async def _retire_removed(self, name: str, present: set[int], imported: dict[int, Imported]) -> None:
        """A removed version folder retires its version (``latest`` skips it); nothing is deleted."""
        for repo_version, known in imported.items():
            if repo_version not in present and not known.retired:
                try:
                    await self._registry.set_retired(name, known.version, True)
                except NotFound:
                    continue  # deleted from the registry meanwhile
                known.retired = True
                log.info(
                    "model repository version folder removed; version retired",
                    extra={"model": name, "repository_version": repo_version, "version": known.version},
                )

    def _refuse(self, report: SyncReport, path: Path, name: str, why: str) -> None:
        report.refused[str(path)] = why
        if self.problems.get(str(path)) != why:  # once per problem, not once per poll
            log.warning("model repository entry refused", extra={"model": name, "path": str(path), "error": why})
            metrics.REPOSITORY_IMPORTS.labels(name, "refused").inc()

    async def preload(self, manager: Any, names: list[str]) -> None:
        """Load and warm what each model's serving policy serves, before the server reports SERVING."""
        for name in names:
            try:
                await manager.get(ModelRef(name))
            except Exception as e:
                log.warning("model repository preload failed", extra={"model": name, "error": str(e)})


class S3Mirror:
    """Keeps a local copy of ``s3://bucket/prefix`` (TT_S3_ENDPOINT_URL, TT_S3_REGION and the usual AWS_*
    credentials apply)."""

    def __init__(self, url: str, local_root: Path, settings: Settings) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.local_root = local_root
        self._settings = settings
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._etags = local_root.parent / "model-repository.etags.json"

    async def mirror(self) -> None:
        store = make_s3_blob_store(self._settings, self._bucket, self._prefix, create_bucket=False)
        await store.open()
        try:
            objects = await store.list_objects("")
            known: dict[str, str] = await asyncio.to_thread(_read_etags, self._etags)
            wanted = {key for key, _, _ in objects if not key.endswith("/")}
            for key, _size, etag in objects:
                if key not in wanted:
                    continue
                target = self.local_root / key
                if not target.resolve().is_relative_to(self.local_root.resolve()):
                    continue  # "../" in a key: never written outside the mirror
                if known.get(key) == etag and await asyncio.to_thread(target.is_file):
                    continue
                await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
                await store.get_file(key, target)
                known[key] = etag
            for key in [k for k in known if k not in wanted]:
                await asyncio.to_thread((self.local_root / key).unlink, True)
                del known[key]
            await asyncio.to_thread(_write_etags, self._etags, known, self.local_root)
        finally:
            await store.close()


def _read_etags(path: Path) -> dict[str, str]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _write_etags(path: Path, etags: dict[str, str], root: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(etags, sort_keys=True), encoding="utf-8")
    # Folders left empty by removed objects go too, so a removed version folder is gone locally as well.
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds when empty


# --- files (worker threads) -----------------------------------------------------------------------------
def _subdirs(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _lock_file(path: Path) -> io.BufferedWriter:
    handle = path.open("ab")
    fcntl.flock(handle, fcntl.LOCK_EX)  # blocks this worker thread, not the event loop
    return handle


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} must hold a JSON object")
    return data


def _read_config(model_dir: Path) -> dict[str, Any]:
    """The model's config: tensortrigger.json, else TFaaS's params.json (+ its labels file)."""
    for name in (CONFIG_FILE, TFAAS_PARAMS):
        if (model_dir / name).is_file():
            return _normalised(_read_json(model_dir / name), model_dir)
    return {}


def _normalised(params: dict[str, Any], folder: Path) -> dict[str, Any]:
    """TFaaS's params.json keys and a labels file name -> our config keys."""
    config = dict(params)
    labels_file = config.pop("class_names", None) if isinstance(config.get("class_names"), str) else None
    if isinstance(config.get("labels"), str):  # TFaaS: "labels": "labels.txt"
        labels_file = config.pop("labels")
    if labels_file:
        lines = [line.strip() for line in (folder / labels_file).read_text(encoding="utf-8").splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        config["class_names"] = lines
    return config


def _folder_sha256(folder: Path) -> str:
    """Over every file's relative path and bytes, in path order: the same folder always hashes the same."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def _version_dirs(model_dir: Path) -> list[tuple[int, Path]]:
    """Numbered version folders, oldest first; a TFaaS folder (a model file beside params.json, no version
    folders) is version 1 itself."""
    numbered = sorted((int(d.name), d) for d in _subdirs(model_dir) if _VERSION_DIR.match(d.name))
    if not numbered and (model_dir / TFAAS_PARAMS).is_file():
        return [(1, model_dir)]
    return numbered


def _artifact(
    version_dir: Path, scratch: Path, config: dict[str, Any]
) -> tuple[Path, ModelFormat, FrozenGraphNodes | None, dict[str, Any]]:
    """The file to upload for a version folder, its format, a frozen graph's nodes, and the model's config
    overlaid with the version folder's own params.json."""
    if (version_dir / "saved_model.pb").is_file():
        packed = scratch / "saved_model.tar.gz"
        with tarfile.open(packed, "w:gz") as tar:
            for path in sorted(version_dir.rglob("*")):
                tar.add(path, arcname=path.relative_to(version_dir).as_posix(), recursive=False)
        return packed, ModelFormat.SAVED_MODEL_TAR_GZ, None, config
    files = sorted(p for p in version_dir.iterdir() if p.is_file())
    for suffix, fmt in ((".keras", ModelFormat.KERAS), (".h5", ModelFormat.H5)):
        matches = [p for p in files if p.suffix == suffix]
        if len(matches) == 1:
            return matches[0], fmt, None, config
        if matches:
            raise ValueError(f"more than one {suffix} file: {', '.join(p.name for p in matches)}")
    params = {**config, **_read_config(version_dir)}
    graphs = [p for p in files if p.suffix == ".pb"]
    if params.get("model"):
        graphs = [version_dir / str(params["model"])]
    if len(graphs) == 1:
        inputs, outputs = params.get("inputNode"), params.get("outputNode")
        if not inputs or not outputs:
            raise ValueError(f"the frozen graph {graphs[0].name} needs params.json with inputNode and outputNode")
        nodes = FrozenGraphNodes(tuple(_names(inputs)), tuple(_names(outputs)))
        return graphs[0], ModelFormat.FROZEN_GRAPH, nodes, params
    raise ValueError("no model found: expected saved_model.pb, one .keras or .h5 file, or a frozen graph .pb")


def _names(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, _CHUNK):
            yield chunk
