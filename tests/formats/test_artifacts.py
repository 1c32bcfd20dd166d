"""Format detection and safe unpacking, on real model files and hand-crafted hostile archives."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import models
from tt_server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from tt_server.formats.artifacts import ArchiveLimits, detect_format, unpack_archive
from tt_server.types import ModelFormat

Builder = Callable[[Path], Path]
Build = Callable[[Builder], Path]  # the `build` fixture
LIMITS = ArchiveLimits(max_members=100, max_unpacked_bytes=64 << 20, max_ratio=200.0)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """Build an artifact once per module (see models.cached_builds)."""
    return models.cached_builds(tmp_path_factory.mktemp("artifacts"))


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if not p.is_dir()]


# --- detect_format --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        (models.mlp_keras, ModelFormat.KERAS),
        (models.mlp_h5, ModelFormat.H5),
        (models.mlp_saved_model_tar_gz, ModelFormat.SAVED_MODEL_TAR_GZ),
        (models.mlp_saved_model_zip, ModelFormat.SAVED_MODEL_ZIP),  # saved_model.pb at the top
        (models.module_saved_model_zip, ModelFormat.SAVED_MODEL_ZIP),  # under one top directory
    ],
)
def test_detects_format_from_content(build: Build, tmp_path: Path, builder: Builder, expected: ModelFormat) -> None:
    # Uploads are spooled without a file name: only the bytes count.
    blob = models.copy_to(build(builder), tmp_path / "blob")
    assert detect_format(blob, None) is expected
    assert detect_format(blob, expected) is expected


def test_zip_with_macos_junk_is_still_a_saved_model(build: Build, tmp_path: Path) -> None:
    export = build(models.mlp_export_dir)
    archive = models.pack_zip(export, tmp_path / "finder.zip", top="mlp")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("__MACOSX/mlp/._saved_model.pb", b"\0")
    assert detect_format(archive, None) is ModelFormat.SAVED_MODEL_ZIP
    assert unpack_archive(archive, tmp_path / "out", LIMITS) == tmp_path / "out" / "mlp"


@pytest.mark.parametrize(
    ("declared", "builder", "description"),
    [
        (ModelFormat.KERAS, models.mlp_saved_model_tar_gz, "a gzip archive"),
        (ModelFormat.H5, models.mlp_keras, "a Keras (.keras) zip archive"),
        (ModelFormat.KERAS, models.mlp_h5, "an HDF5 (.h5) file"),
        (ModelFormat.KERAS, models.mlp_saved_model_zip, "a zip archive holding a SavedModel"),
        (ModelFormat.SAVED_MODEL_ZIP, models.mlp_saved_model_tar_gz, "a gzip archive"),
    ],
)
def test_declared_format_must_match_content(
    build: Build, declared: ModelFormat, builder: Builder, description: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        detect_format(build(builder), declared)
    assert info.value.violations[0].field == "spec.format"
    assert info.value.violations[0].description == f"declared {declared.name} but the file is {description}"


def _uncompressed_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("saved_model.pb"))
    return buffer.getvalue()


def _zip_of(names: list[str], metadata: bytes = b"{}") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in names:
            zf.writestr(name, metadata if name == "metadata.json" else b"{}")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "looks_like"),
    [
        (b"", "the file is empty"),
        (b'{"class_name": "Functional"}', "JSON text"),
        (b"hello, model\n", "plain text"),
        (b"BZh91AY&SY", "a bzip2 archive"),
        (bytes(range(200, 256)), "unknown binary content starting c8 c9"),
        (_uncompressed_tar(), "an uncompressed tar archive; gzip it"),
        (_zip_of(["README.txt"]), "unrecognised zip archive"),
        (_zip_of(["a/saved_model.pb", "b/saved_model.pb"]), "unrecognised zip archive"),  # two top dirs
        (_zip_of(["config.json", "metadata.json"]), "unrecognised zip archive"),  # no keras_version
    ],
)
def test_unknown_content_is_described(tmp_path: Path, content: bytes, looks_like: str) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(content)
    with pytest.raises(InvalidArgument) as info:
        detect_format(blob, ModelFormat.KERAS)
    assert info.value.violations[0].field == "spec.format"
    assert looks_like in info.value.message


def test_keras_zip_needs_keras_version(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(_zip_of(["config.json", "metadata.json"], metadata=b'{"keras_version": "3.15.1"}'))
    assert detect_format(blob, None) is ModelFormat.KERAS


def test_truncated_keras_file_is_corrupt(build: Build) -> None:
    with pytest.raises(InvalidArgument) as info:
        detect_format(build(models.truncated_keras), None)
    assert info.value.violations[0].field == "artifact"
    assert "truncated or corrupt" in info.value.message


# --- unpack_archive: good archives ----------------------------------------------------------------------


def test_unpacks_tar_gz_with_top_directory(build: Build, tmp_path: Path) -> None:
    archive = build(models.mlp_saved_model_tar_gz)
    root = unpack_archive(archive, tmp_path / "out", LIMITS)
    assert root == tmp_path / "out" / "mlp"
    export = archive.parent / "mlp_export"  # the directory the builder packed
    unpacked = {p.relative_to(root) for p in files_under(root)}
    assert unpacked == {p.relative_to(export) for p in files_under(export)}
    assert (root / "saved_model.pb").read_bytes() == (export / "saved_model.pb").read_bytes()


def test_unpacks_zip_at_top_level(build: Build, tmp_path: Path) -> None:
    root = unpack_archive(build(models.mlp_saved_model_zip), tmp_path / "out", LIMITS)
    assert root == tmp_path / "out"
    assert (root / "variables" / "variables.index").is_file()


def test_unpacks_tar_made_with_dot_prefix(build: Build, tmp_path: Path) -> None:
    # `tar czf m.tar.gz -C dir .` names members "./saved_model.pb" and adds "./" itself.
    archive = tmp_path / "dot.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(build(models.module_saved_model_dir), arcname=".")
    assert unpack_archive(archive, tmp_path / "out", LIMITS) == tmp_path / "out"
    assert (tmp_path / "out" / "saved_model.pb").is_file()


def test_archive_without_saved_model_pb_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "empty.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("model/variables/variables.index"), io.BytesIO(b""))
    with pytest.raises(InvalidArgument) as info:
        unpack_archive(archive, tmp_path / "out", LIMITS)
    assert "no saved_model.pb" in info.value.message


def test_non_archive_is_rejected(build: Build, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        unpack_archive(build(models.mlp_h5), tmp_path / "out", LIMITS)


# --- unpack_archive: hostile archives -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        (models.zip_slip_zip, "member '../evil' points outside the archive"),
        (models.zip_slip_tar_gz, "member 'model/../../evil' points outside the archive"),
        (models.absolute_path_tar_gz, "member '/tmp/tt-test-evil' has an absolute path"),
        (models.absolute_path_zip, "member '/tmp/tt-test-evil' has an absolute path"),
        (models.symlink_tar_gz, "member 'variables' is a symbolic link to '/etc'"),
        (models.symlink_zip, "member 'variables' is a symbolic link"),
        (models.hardlink_tar_gz, "member 'passwd' is a hard link to '/etc/passwd'"),
        (models.device_tar_gz, "member 'null' is a device file"),
        (models.fifo_tar_gz, "member 'pipe' is a FIFO"),
    ],
)
def test_unsafe_members_are_refused_before_extraction(
    build: Build, tmp_path: Path, builder: Builder, message: str
) -> None:
    dest = tmp_path / "deep" / "out"
    with pytest.raises(FailedPrecondition) as info:
        unpack_archive(build(builder), dest, LIMITS)
    assert message in info.value.message
    assert info.value.message.startswith("unsafe archive: ")
    # Not even the harmless saved_model.pb ahead of the bad member was written.
    assert files_under(tmp_path) == []
    assert not Path("/tmp/tt-test-evil").exists()


def test_backslash_names_are_refused(tmp_path: Path) -> None:
    archive = models.zip_with(tmp_path, "windows.zip", zipfile.ZipInfo("..\\..\\evil"), b"x")
    with pytest.raises(FailedPrecondition, match="not a plain relative path"):
        unpack_archive(archive, tmp_path / "out", LIMITS)


def test_duplicate_members_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "dup.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for data in (b"first", b"second"):
            info = tarfile.TarInfo("saved_model.pb")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(FailedPrecondition, match=r"'saved_model\.pb' clashes with another member"):
        unpack_archive(archive, tmp_path / "out", LIMITS)


@pytest.mark.parametrize("builder", [models.zip_bomb_zip, models.tar_gz_bomb])
def test_compression_bombs_are_refused(build: Build, tmp_path: Path, builder: Builder) -> None:
    archive = build(builder)
    # 8 MiB of zeros, well under the size cap: the ratio alone gives it away.
    assert archive.stat().st_size * LIMITS.max_ratio < 8 << 20 < LIMITS.max_unpacked_bytes
    with pytest.raises(ResourceExhausted) as info:
        unpack_archive(archive, tmp_path / "out", LIMITS)
    assert "compression ratio exceeds 200" in info.value.message
    assert "variables/variables.data-00000-of-00001" in info.value.message
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_unpacked_size_is_capped(tmp_path: Path, kind: str) -> None:
    data = os.urandom(2 << 20)  # incompressible: the ratio stays near 1
    member = "variables/variables.data-00000-of-00001"
    if kind == "zip":
        archive = models.zip_with(tmp_path, "big.zip", zipfile.ZipInfo(member), data)
    else:
        archive = models.tar_gz_with(tmp_path, "big.tar.gz", tarfile.TarInfo(member), data)
    limits = ArchiveLimits(max_members=100, max_unpacked_bytes=1 << 20, max_ratio=200.0)
    with pytest.raises(ResourceExhausted, match=f"unpacks to more than 1048576 bytes .*{member}"):
        unpack_archive(archive, tmp_path / "out", limits)
    unpack_archive(archive, tmp_path / "out", LIMITS)  # fine under the normal caps


def test_member_count_is_capped(tmp_path: Path) -> None:
    archive = models.many_members_zip(tmp_path, count=11)
    limits = ArchiveLimits(max_members=10, max_unpacked_bytes=1 << 20, max_ratio=200.0)
    with pytest.raises(ResourceExhausted, match="11 members, more than 10"):
        unpack_archive(archive, tmp_path / "out", limits)
    tar_archive = tmp_path / "many.tar.gz"
    with tarfile.open(tar_archive, "w:gz") as tar:
        for i in range(11):
            tar.addfile(tarfile.TarInfo(f"f{i}"), io.BytesIO(b""))
    with pytest.raises(ResourceExhausted, match="more than 10 members"):
        unpack_archive(tar_archive, tmp_path / "out2", limits)


def test_zip_that_understates_a_size_is_corrupt(tmp_path: Path) -> None:
    data = b"x" * 5000
    archive = models.zip_with(tmp_path, "liar.zip", zipfile.ZipInfo("variables/data"), data)
    raw = bytearray(archive.read_bytes())
    # Central directory entry of the second member: the uncompressed size is at offset 24.
    entry = raw.index(b"PK\x01\x02", raw.index(b"PK\x01\x02") + 4)
    raw[entry + 24 : entry + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(raw)
    with pytest.raises(InvalidArgument) as info:
        unpack_archive(archive, tmp_path / "out", LIMITS)
    assert info.value.violations[0].field == "artifact"
    # Extraction stopped at the declared size instead of trusting the stream.
    assert (tmp_path / "out" / "variables" / "data").stat().st_size <= 10


@pytest.mark.parametrize("builder", [models.mlp_saved_model_tar_gz, models.mlp_saved_model_zip])
def test_truncated_archives_are_corrupt(build: Build, tmp_path: Path, builder: Builder) -> None:
    source = build(builder)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size * 2 // 3])
    with pytest.raises(InvalidArgument) as info:
        unpack_archive(truncated, tmp_path / "out", LIMITS)
    assert info.value.violations[0].field == "artifact"
    assert info.value.violations[0].description.startswith("the archive is truncated or corrupt: ")
