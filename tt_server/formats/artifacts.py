"""Artifact format detection, the file suffix each format is stored under, and safe unpacking of SavedModel
archives.

Uploads are untrusted. The format is read from the bytes (never from a file name), and archives are checked
member by member *before* anything is written: no absolute paths, no ``..``, nothing but regular files and
directories, and caps on member count, unpacked size and compression ratio. Declared sizes are not trusted
either: bytes are counted again while extracting.
"""

from __future__ import annotations

import gzip
import json
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from tt_server.config import Settings
from tt_server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from tt_server.types import ModelFormat

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
SAVED_MODEL_PB = "saved_model.pb"
# Finder's "Compress" adds this folder beside the real content; it never holds model files.
_MACOS_JUNK = "__MACOSX"
_MAX_METADATA_BYTES = 1 << 20
_COPY_CHUNK = 1 << 20

# keras.saving.load_model picks its reader by file extension, so local copies of an artifact carry these.
ARTIFACT_SUFFIX = {
    ModelFormat.KERAS: ".keras",
    ModelFormat.H5: ".h5",
    ModelFormat.SAVED_MODEL_TAR_GZ: ".tar.gz",
    ModelFormat.SAVED_MODEL_ZIP: ".zip",
    ModelFormat.FROZEN_GRAPH: ".pb",
}

_DESCRIPTIONS = {
    ModelFormat.KERAS: "a Keras (.keras) zip archive",
    ModelFormat.H5: "an HDF5 (.h5) file",
    ModelFormat.SAVED_MODEL_TAR_GZ: "a gzip archive",
    ModelFormat.SAVED_MODEL_ZIP: "a zip archive holding a SavedModel",
    ModelFormat.FROZEN_GRAPH: "a TensorFlow frozen graph (GraphDef)",
}


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Caps applied to every archive before and while it is unpacked."""

    max_members: int
    max_unpacked_bytes: int
    max_ratio: float  # unpacked bytes / archive bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        return cls(
            max_members=settings.max_archive_members,
            max_unpacked_bytes=settings.max_unpacked_bytes,
            max_ratio=settings.max_compression_ratio,
        )


def detect_format(path: Path, declared: ModelFormat | None) -> ModelFormat:
    """Return the artifact's format as read from its content; ``declared`` must agree when given."""
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith(HDF5_MAGIC):
        actual = ModelFormat.H5
    elif head.startswith(GZIP_MAGIC):
        actual = ModelFormat.SAVED_MODEL_TAR_GZ
    elif head.startswith(ZIP_MAGIC):
        actual = _zip_format(path)
    elif declared is ModelFormat.FROZEN_GRAPH:
        # A GraphDef is a bare protobuf with no magic bytes: the declaration is the evidence, and inspection
        # checks that the bytes parse as a graph.
        actual = ModelFormat.FROZEN_GRAPH
    else:
        description = _describe(head)
        if description.startswith("unknown binary"):
            description += "; a TensorFlow frozen graph (.pb) must be declared with `spec.frozen_graph`"
        raise InvalidArgument.field("spec.format", f"unrecognised model file: {description}")
    if declared is not None and declared != actual:
        raise InvalidArgument.field("spec.format", f"declared {declared.name} but the file is {_DESCRIPTIONS[actual]}")
    return actual


def _zip_format(path: Path) -> ModelFormat:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if saved_model_pb_name(names) is not None:
                return ModelFormat.SAVED_MODEL_ZIP
            if "config.json" in names and "metadata.json" in names and _has_keras_version(zf):
                return ModelFormat.KERAS
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise _corrupt(e) from None
    raise InvalidArgument.field(
        "spec.format",
        "unrecognised zip archive: it is neither a Keras .keras file (config.json + metadata.json with "
        "keras_version) nor a SavedModel (saved_model.pb at the top or in one top directory)",
    )


def _has_keras_version(zf: zipfile.ZipFile) -> bool:
    info = zf.getinfo("metadata.json")
    if info.file_size > _MAX_METADATA_BYTES:
        return False
    try:
        metadata = json.loads(zf.read(info))
    except (ValueError, RuntimeError):  # RuntimeError: encrypted member
        return False
    return isinstance(metadata, dict) and "keras_version" in metadata


def saved_model_pb_name(names: Iterable[str]) -> str | None:
    """The member name of ``saved_model.pb`` at the top level or inside the archive's single top directory."""
    paths = [PurePosixPath(n) for n in names]
    paths = [p for p in paths if p.parts and p.parts[0] != _MACOS_JUNK]
    if PurePosixPath(SAVED_MODEL_PB) in paths:
        return SAVED_MODEL_PB
    tops = {p.parts[0] for p in paths}
    if len(tops) == 1:
        candidate = PurePosixPath(tops.pop(), SAVED_MODEL_PB)
        if candidate in paths:
            return str(candidate)
    return None


def _describe(head: bytes) -> str:
    """A short guess at what an unrecognised file is, so the error tells the user what to fix."""
    if not head:
        return "the file is empty"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "an uncompressed tar archive; gzip it (.tar.gz)"
    if head.startswith(b"PK\x05\x06"):
        return "an empty zip archive"
    for magic, name in ((b"BZh", "a bzip2"), (b"\xfd7zXZ\x00", "an xz"), (b"7z\xbc\xaf\x27\x1c", "a 7-Zip")):
        if head.startswith(magic):
            return f"{name} archive; pack SavedModels as .tar.gz or .zip"
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON text; upload the whole model file, not its config"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"unknown binary content starting {head[:8].hex(' ')}"
    return "plain text"


def unpack_archive(path: Path, dest_dir: Path, limits: ArchiveLimits) -> Path:
    """Unpack a SavedModel ``.tar.gz`` or ``.zip`` into ``dest_dir``; return the dir holding saved_model.pb.

    Every member is checked before the first byte is written, so a rejected archive leaves ``dest_dir``
    empty; an archive that lies about its sizes may leave partial files, which the caller's scratch
    cleanup removes.
    """
    with path.open("rb") as f:
        head = f.read(4)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if head.startswith(GZIP_MAGIC):
        _unpack_tar_gz(path, dest_dir, limits)
    elif head.startswith(ZIP_MAGIC):
        _unpack_zip(path, dest_dir, limits)
    else:
        raise InvalidArgument.field("spec.format", "a SavedModel must be packed as .tar.gz or .zip")
    return _saved_model_root(dest_dir)


def _unpack_tar_gz(path: Path, dest_dir: Path, limits: ArchiveLimits) -> None:
    packed = path.stat().st_size
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            members: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
            declared = 0
            # Iterating reads headers only; stop at the first bad one instead of listing a bomb completely.
            for count, member in enumerate(tar, start=1):
                if count > limits.max_members:
                    raise ResourceExhausted(f"the archive has more than {limits.max_members} members")
                rel = member_path(member.name)
                if not (member.isreg() or member.isdir()) or member.issparse():
                    raise FailedPrecondition(f"unsafe archive: member {member.name!r} is {_tar_kind(member)}")
                declared += member.size
                check_unpacked_size(declared, packed, limits, member.name)
                if rel is not None:
                    members.append((member, rel))
            written = 0
            for member, rel in members:
                target = _target(dest_dir, rel, member.name)
                if member.isdir():
                    _mkdir(target, member.name)
                    continue
                src = tar.extractfile(member)
                if src is None:  # unreachable for regular files; keeps the type checker honest
                    raise FailedPrecondition(f"unsafe archive: member {member.name!r} cannot be read")
                with src:
                    written = _copy(src, target, written, packed, limits, member.name)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _corrupt(e) from None


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    if member.issparse():
        return "a sparse file"
    return "not a regular file or directory"


def _unpack_zip(path: Path, dest_dir: Path, limits: ArchiveLimits) -> None:
    packed = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            infos = check_zip_members(zf, packed, limits)
            written = 0
            for info, rel in infos:
                target = _target(dest_dir, rel, info.filename)
                if info.is_dir():
                    _mkdir(target, info.filename)
                    continue
                with zf.open(info) as src:
                    written = _copy(src, target, written, packed, limits, info.filename)
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise _corrupt(e) from None


def check_zip_members(
    zf: zipfile.ZipFile, packed: int, limits: ArchiveLimits
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Check every member of an open zip against the safety rules and caps; return the ones to extract.

    Reads the central directory only, so it is cheap even for a zip bomb. Also used on ``.keras`` files,
    which Keras itself opens as zips.
    """
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise ResourceExhausted(f"the archive has {len(infos)} members, more than {limits.max_members}")
    members = []
    declared = 0
    for info in infos:
        rel = member_path(info.filename)
        mode = info.external_attr >> 16  # Unix mode bits; the file type bits are 0 when not recorded
        if stat.S_ISLNK(mode):
            raise FailedPrecondition(f"unsafe archive: member {info.filename!r} is a symbolic link")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise FailedPrecondition(f"unsafe archive: member {info.filename!r} is not a regular file")
        if info.flag_bits & 0x1:
            raise FailedPrecondition(f"unsupported archive: member {info.filename!r} is encrypted")
        declared += info.file_size
        check_unpacked_size(declared, packed, limits, info.filename)
        if rel is not None:
            members.append((info, rel))
    return members


def member_path(name: str) -> PurePosixPath | None:
    """The member's path relative to the extraction root, or None for the root itself (``./``).

    Raises FailedPrecondition for names that could land outside the root.
    """
    if not name or "\x00" in name or "\\" in name:
        raise FailedPrecondition(f"unsafe archive: member name {name!r} is not a plain relative path")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise FailedPrecondition(f"unsafe archive: member {name!r} has an absolute path")
    if ".." in path.parts:
        raise FailedPrecondition(f"unsafe archive: member {name!r} points outside the archive ('..')")
    return path if path.parts else None


def check_unpacked_size(unpacked: int, packed: int, limits: ArchiveLimits, member: str) -> None:
    """Raise ResourceExhausted once ``unpacked`` bytes (running total up to ``member``) pass a cap."""
    if unpacked > limits.max_unpacked_bytes:
        raise ResourceExhausted(
            f"the archive unpacks to more than {limits.max_unpacked_bytes} bytes (at member {member!r})"
        )
    if unpacked > limits.max_ratio * max(packed, 1):
        raise ResourceExhausted(
            f"the archive's compression ratio exceeds {limits.max_ratio:g} (at member {member!r}); "
            "refusing a possible zip bomb"
        )


def _target(dest_dir: Path, rel: PurePosixPath, name: str) -> Path:
    target = dest_dir.joinpath(*rel.parts)
    # member_path already rules out escapes; this guards against anything it missed.
    if not target.resolve().is_relative_to(dest_dir.resolve()):
        raise FailedPrecondition(f"unsafe archive: member {name!r} points outside the archive")
    return target


def _mkdir(target: Path, name: str) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FailedPrecondition(f"unsafe archive: member {name!r} clashes with another member") from None


def _copy(src: IO[bytes], target: Path, written: int, packed: int, limits: ArchiveLimits, name: str) -> int:
    """Copy one member, counting real bytes against the caps; return the new running total."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # "xb": a second member with the same name must not silently replace the first.
        out = target.open("xb")
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise FailedPrecondition(f"unsafe archive: member {name!r} clashes with another member") from None
    with out:
        while chunk := src.read(_COPY_CHUNK):
            written += len(chunk)
            check_unpacked_size(written, packed, limits, name)
            out.write(chunk)
    return written


def _saved_model_root(dest_dir: Path) -> Path:
    names = [p.relative_to(dest_dir).as_posix() for p in dest_dir.rglob("*") if p.is_file()]
    pb = saved_model_pb_name(names)
    if pb is None:
        raise InvalidArgument.field(
            "spec.format",
            f"the archive holds no {SAVED_MODEL_PB} at its top level or in its single top directory",
        )
    return dest_dir.joinpath(pb).parent


def _corrupt(e: BaseException) -> InvalidArgument:
    detail = str(e) or type(e).__name__
    return InvalidArgument.field("artifact", f"the archive is truncated or corrupt: {detail}")
