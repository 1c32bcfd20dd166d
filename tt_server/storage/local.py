"""LocalBlobStore: the embedded BlobStore, one file per key under a root folder.

Keys are ``/``-separated relative paths. A write goes to a hidden temporary file next to its target, is
fsynced and then renamed over the target, so readers see the old object or the whole new one, never a part.
A delete also removes the folders it leaves empty, up to the root (as S3 has no folders, a key's folders
exist only while keys are under them): ``jobs/<id>/`` does not outlive its job's blobs.
File I/O runs in worker threads (``asyncio.to_thread``) so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

from tt_server.errors import NotFound
from tt_server.storage.blobs import BlobInfo

CHUNK_SIZE = 1 << 20

# What the OS says when a key's file is absent, or a key names a folder (or passes through a file).
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


# Files are opened on the event loop (opening is quick): opened in a worker thread, a cancellation during the
# await would drop the handle the thread still opened, leaking it (and, for writes, an orphan file). Reads and
# writes, which can be slow, go to threads.


async def read_file_chunks(path: Path, chunk_size: int = CHUNK_SIZE, offset: int = 0) -> AsyncGenerator[bytes, None]:
    """Yield a file's bytes from ``offset``, read in a worker thread (both blob stores' put_file use it)."""
    f = path.open("rb")  # on the loop: see the comment above read_file_chunks
    try:
        await asyncio.to_thread(f.seek, offset)
        while chunk := await asyncio.to_thread(f.read, chunk_size):
            yield chunk
    finally:
        f.close()


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


async def write_file_chunks(path: Path, chunks: AsyncIterator[bytes]) -> None:
    """Write the chunks to ``path`` from a worker thread; on any failure no partial file is left behind."""
    f = path.open("wb")  # on the loop: see the comment above read_file_chunks
    try:
        async for chunk in chunks:
            await asyncio.to_thread(f.write, chunk)
    except BaseException:
        # Plain blocking calls: quick, and they must run even when the task is being cancelled.
        f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    f.close()


class LocalBlobStore:
    """Blobs as files under ``root``. Names starting with ``.`` are reserved for in-progress writes."""

    def __init__(self, root: Path) -> None:
        self._root = root

    async def open(self) -> None:
        await asyncio.to_thread(self._root.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        pass

    def _path(self, key: str) -> Path:
        """The file for ``key``; refuses keys that could escape ``root`` or collide with temporary files."""
        segments = key.split("/")
        # An empty segment also catches a leading "/" (absolute path); "." covers "." and "..".
        if any(not s or s.startswith(".") or "\\" in s or "\0" in s for s in segments):
            raise ValueError(f"invalid blob key {key!r}")
        return self._root.joinpath(*segments)

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> BlobInfo:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        digest = hashlib.sha256()
        size = 0
        f = await self._create(tmp)
        try:
            async for chunk in chunks:
                # Hashing in the same thread hop as the write; hashlib releases the GIL for large buffers.
                await asyncio.to_thread(_hash_and_write, f, digest, chunk)
                size += len(chunk)
            await asyncio.to_thread(_sync_and_close, f)
            await asyncio.to_thread(os.replace, tmp, path)
            await asyncio.to_thread(_sync_dir, path.parent)  # makes the rename itself survive a crash
        except BaseException:
            # Runs on cancellation too: plain blocking calls, because they are quick and must not be skipped.
            f.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return BlobInfo(key=key, size=size, sha256=digest.hexdigest())

    async def _create(self, tmp: Path) -> BinaryIO:
        """Open ``tmp`` for writing, making its folders. A delete of the folder's last key may remove the folder
        between the two (its empty-folder clean-up): then make it again."""
        for _ in range(100):
            await asyncio.to_thread(tmp.parent.mkdir, parents=True, exist_ok=True)
            try:
                return tmp.open("xb")  # on the loop: see the comment above read_file_chunks
            except FileNotFoundError:
                continue
        raise OSError(f"could not create {tmp.parent}: its folder keeps being removed")

    async def put_file(self, key: str, path: Path) -> BlobInfo:
        return await self.put_stream(key, read_file_chunks(path))

    async def get_stream(self, key: str, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        if offset < 0:
            raise ValueError("offset must not be negative")
        path = self._path(key)
        chunks = read_file_chunks(path, chunk_size, offset)
        try:
            # Opening happens at the first read; do it before yielding so a missing key fails cleanly.
            first = await anext(chunks, b"")
        except _MISSING:
            raise NotFound(f"blob {key!r} not found") from None
        try:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        f = self._path(key)
        try:
            return await asyncio.to_thread(_read_range, f, offset, length)
        except _MISSING:
            raise NotFound(f"blob {key!r} not found") from None

    async def get_file(self, key: str, path: Path) -> None:
        await write_file_chunks(path, self.get_stream(key))

    async def size(self, key: str) -> int:
        path = self._path(key)
        try:
            stat = await asyncio.to_thread(path.stat)
        except _MISSING:
            raise NotFound(f"blob {key!r} not found") from None
        if not S_ISREG(stat.st_mode):  # a folder holding other keys is not a blob
            raise NotFound(f"blob {key!r} not found")
        return stat.st_size

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, self._path(key))

    def _delete(self, path: Path) -> None:
        with contextlib.suppress(*_MISSING):
            path.unlink()
        # Also when the key was never written: a failed write may have made its folders.
        self._remove_empty_folders(path.parent)

    def _remove_empty_folders(self, folder: Path) -> None:
        """Remove ``folder`` and its parents, below the root, while they are empty."""
        while folder != self._root:
            try:
                folder.rmdir()
            except OSError:  # not empty (another key, a write in progress), or gone already
                if folder.exists():
                    return
            folder = folder.parent

    async def list_keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list_keys, prefix)

    def _list_keys(self, prefix: str) -> list[str]:
        # Prefixes are plain string prefixes, as in S3; walking starts at the deepest folder the prefix names.
        folders = prefix.split("/")[:-1]
        if any(not s or s.startswith(".") for s in folders):
            return []  # no valid key starts like this, and walking it could leave root
        start = self._root.joinpath(*folders)
        keys = []
        for folder, dirs, files in os.walk(start):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            relative = Path(folder).relative_to(self._root).as_posix()
            for name in files:
                key = name if relative == "." else f"{relative}/{name}"
                if not name.startswith(".") and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    async def abort_stale_writes(self, older_than_seconds: float) -> int:
        return await asyncio.to_thread(self._remove_stale_temporaries, time.time() - older_than_seconds)

    def _remove_stale_temporaries(self, cutoff: float) -> int:
        removed = 0
        for folder, _dirs, files in os.walk(self._root):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    path = Path(folder, name)
                    with contextlib.suppress(FileNotFoundError):
                        if path.stat().st_mtime < cutoff:
                            path.unlink()
                            removed += 1
                            self._remove_empty_folders(path.parent)
        return removed


def _hash_and_write(f: BinaryIO, digest: hashlib._Hash, chunk: bytes) -> None:
    digest.update(chunk)
    f.write(chunk)


def _sync_and_close(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
