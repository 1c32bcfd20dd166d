"""BlobStore: immutable byte objects by key (model artifacts, job inputs and results).

``S3BlobStore`` (aiobotocore, production; streaming multipart upload) and ``LocalBlobStore`` (a folder, the
embedded default; atomic rename on write). Writes compute sha256 while streaming. Reads stream in chunks and may
start at an offset. Errors: a missing key raises ``NotFound``; an unreachable store raises ``Unavailable``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int
    sha256: str  # hex digest of the whole object


class BlobStore(Protocol):
    async def open(self) -> None:
        """Connect (and, for S3, make sure the bucket exists)."""

    async def close(self) -> None: ...

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> BlobInfo:
        """Store the concatenated chunks under ``key``; nothing is visible under ``key`` unless this returns."""

    async def put_file(self, key: str, path: Path) -> BlobInfo: ...

    def get_stream(self, key: str, offset: int = 0, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Yield the object's bytes from ``offset`` in chunks of at most ``chunk_size``."""
        ...

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        """The object's bytes ``[offset, offset + length)`` in one read (fewer at its end): for readers that
        seek, such as Parquet's footer-then-row-groups, without fetching the whole object."""
        ...

    async def get_file(self, key: str, path: Path) -> None:
        """Download the whole object to ``path``."""

    async def size(self, key: str) -> int: ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""

    async def list_keys(self, prefix: str) -> list[str]: ...

    async def abort_stale_writes(self, older_than_seconds: float) -> int:
        """Abort writes begun over ``older_than_seconds`` ago that never finished (left by a killed process: S3
        multipart uploads, the local store's temporary files); returns how many."""
