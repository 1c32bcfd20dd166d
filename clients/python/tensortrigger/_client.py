"""Synchronous client for Tensor Trigger (first cut: model registry)."""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from tensortrigger._errors import from_rpc_error
from tensortrigger.v1 import model_pb2, registry_service_pb2, registry_service_pb2_grpc

CHUNK_BYTES = 1 << 20

_FORMATS = {
    "keras": model_pb2.MODEL_FORMAT_KERAS,
    "h5": model_pb2.MODEL_FORMAT_H5,
    "saved_model_tar_gz": model_pb2.MODEL_FORMAT_SAVED_MODEL_TAR_GZ,
    "saved_model_zip": model_pb2.MODEL_FORMAT_SAVED_MODEL_ZIP,
}


def model_ref(model: str | model_pb2.ModelRef, version: int | None = None, label: str | None = None) -> Any:
    """``"name"``, ``"name:3"`` (version) or ``"name@stable"`` (label) -> ``ModelRef``."""
    if isinstance(model, model_pb2.ModelRef):
        return model
    name = model
    if version is None and label is None:
        if "@" in model:
            name, label = model.split("@", 1)
        elif ":" in model:
            name, raw = model.rsplit(":", 1)
            version = int(raw)
    if version is not None:
        return model_pb2.ModelRef(name=name, version=version)
    if label is not None:
        return model_pb2.ModelRef(name=name, label=label)
    return model_pb2.ModelRef(name=name)


def _pack_saved_model(directory: Path) -> Path:
    """Pack a SavedModel directory as .tar.gz in a temp file (the caller deletes it)."""
    fd, name = tempfile.mkstemp(suffix=".tar.gz")
    os.close(fd)
    with tarfile.open(name, "w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return Path(name)


class Client:
    """A blocking client. ``Client("127.0.0.1:50051")``; use as a context manager to close the channel."""

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout: float | None = 60.0) -> None:
        self._channel = grpc.insecure_channel(target)
        self._registry = registry_service_pb2_grpc.ModelRegistryServiceStub(self._channel)
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    # --- registry --------------------------------------------------------------------------------------
    def upload(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        description: str = "",
        feature_names: list[str] | None = None,
        metadata: dict[str, str] | None = None,
        labels: list[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
        timeout: float | None = 600.0,
    ) -> model_pb2.ModelVersion:
        """Upload a `.keras`/`.h5` file, a packed SavedModel, or a SavedModel directory (packed for you)."""
        source = Path(path)
        packed = _pack_saved_model(source) if source.is_dir() else None
        artifact = packed or source
        try:
            total = artifact.stat().st_size
            header = registry_service_pb2.UploadHeader(
                model_name=name,
                format=_FORMATS[format]
                if format
                else (model_pb2.MODEL_FORMAT_SAVED_MODEL_TAR_GZ if packed else model_pb2.MODEL_FORMAT_UNSPECIFIED),
                description=description,
                feature_names=feature_names or [],
                metadata=metadata or {},
                labels=labels or [],
                expected_size_bytes=total,
            )

            def requests() -> Iterator[registry_service_pb2.UploadModelVersionRequest]:
                yield registry_service_pb2.UploadModelVersionRequest(header=header)
                sent = 0
                with artifact.open("rb") as f:
                    for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                        sent += len(chunk)
                        if progress:
                            progress(sent, total)
                        yield registry_service_pb2.UploadModelVersionRequest(chunk=chunk)

            response = self._call(self._registry.UploadModelVersion, requests(), timeout)
            return response.version
        finally:
            if packed:
                packed.unlink(missing_ok=True)

    def list_models(self, page_size: int = 0) -> Iterator[model_pb2.Model]:
        """Every model, following page tokens."""
        token = ""
        while True:
            page = self._call(
                self._registry.ListModels,
                registry_service_pb2.ListModelsRequest(page_size=page_size, page_token=token),
            )
            yield from page.models
            token = page.next_page_token
            if not token:
                return

    def get_model(self, name: str) -> model_pb2.Model:
        return self._call(self._registry.GetModel, registry_service_pb2.GetModelRequest(name=name)).model

    def get_version(self, model: str, version: int | None = None, label: str | None = None) -> model_pb2.ModelVersion:
        request = registry_service_pb2.GetModelVersionRequest(model=model_ref(model, version, label))
        return self._call(self._registry.GetModelVersion, request).version

    def list_versions(self, name: str) -> Iterator[model_pb2.ModelVersion]:
        token = ""
        while True:
            page = self._call(
                self._registry.ListModelVersions,
                registry_service_pb2.ListModelVersionsRequest(name=name, page_token=token),
            )
            yield from page.versions
            token = page.next_page_token
            if not token:
                return

    def set_label(self, name: str, label: str, version: int) -> int:
        request = registry_service_pb2.SetLabelRequest(name=name, label=label, version=version)
        return self._call(self._registry.SetLabel, request).previous_version

    def delete_version(self, name: str, version: int, force: bool = False) -> list[str]:
        request = registry_service_pb2.DeleteModelVersionRequest(name=name, version=version, force=force)
        return list(self._call(self._registry.DeleteModelVersion, request).removed_labels)

    def delete_model(self, name: str) -> int:
        return self._call(
            self._registry.DeleteModel, registry_service_pb2.DeleteModelRequest(name=name)
        ).deleted_versions

    def download(self, model: str, dest: str | os.PathLike[str], version: int | None = None) -> model_pb2.ModelVersion:
        """Download a version's artifact to ``dest``; returns the version's record."""
        request = registry_service_pb2.DownloadModelVersionRequest(model=model_ref(model, version))
        target = Path(dest)
        partial = target.with_name(target.name + ".part")
        record = None
        try:
            with partial.open("wb") as out:
                for message in self._registry.DownloadModelVersion(request, timeout=self.timeout):
                    if message.WhichOneof("payload") == "version":
                        record = message.version
                    else:
                        out.write(message.chunk)
        except grpc.RpcError as error:
            partial.unlink(missing_ok=True)
            raise from_rpc_error(error) from None
        partial.replace(target)
        assert record is not None, "the server sent no version record"
        return record
