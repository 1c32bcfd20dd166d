"""Scratch folders that say whether their owner still lives: a folder is claimed by holding an exclusive
``flock`` on its ``.owner`` file for as long as the work runs.

Why a lock rather than an age: a Train session can go quiet on disk for longer than any safe age (a slow client,
a long epoch), so "nothing written for an hour" cannot tell a live session from one whose process was killed.
The kernel drops a ``flock`` when the process holding it dies, however it dies (kill -9 too), so a sweeper that can
take the lock knows the owner is gone. ``flock`` (not ``fcntl``/``lockf`` record locks, which are per process)
also excludes a second open file in the same process, so the server's own sweeper never takes a live session's
folder; sibling processes sharing the data directory (``--workers``) see each other's locks. The training process
is started with ``pass_fds`` (only its socket), so it never inherits a lock. The data directory is one host's
(an emptyDir in k8s/): a network filesystem shared by several hosts may not carry ``flock`` between them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import BinaryIO

OWNER_FILE = ".owner"
UPLOAD_PREFIX = "upload-"  # scratch_dir/upload-<hex>: one upload's spooled artifact and unpacked files
TRAIN_PREFIX = "train-"  # scratch_dir/train-<session id>: a Train session's base artifact and checkpoints
HTTP_UPLOAD_PREFIX = "http-upload-"  # scratch_dir/http-upload-<hex>: a TFaaS upload's form files or bundle
PREFIXES = (UPLOAD_PREFIX, TRAIN_PREFIX, HTTP_UPLOAD_PREFIX)


class ClaimedFolder:
    """A scratch folder held by this process until ``release`` (which removes it)."""

    def __init__(self, path: Path, owner: BinaryIO) -> None:
        self.path = path
        self._owner: BinaryIO | None = owner

    def release(self) -> None:
        """Remove the folder, then drop the lock (so no sweeper races the removal). Harmless twice."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._owner is not None:
            self._owner.close()
            self._owner = None


def claim(path: Path) -> ClaimedFolder:
    """Create the folder ``path`` (its parents if needed; the folder itself must be new) and hold its lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir()
    # Locked under another name, then renamed: a sweeper never finds an owner file that is not locked yet.
    pending = path / f"{OWNER_FILE}.pending"
    owner = pending.open("ab")
    try:
        fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        pending.rename(path / OWNER_FILE)
    except OSError:
        owner.close()
        raise
    return ClaimedFolder(path, owner)


def sweep_abandoned(scratch: Path, unclaimed_max_age_seconds: float) -> int:
    """Remove the scratch folders (``scratch/<prefix>*`` for each of ``PREFIXES``) whose owner is gone: their lock
    can be taken. A folder without an owner file (its process died between creating and locking it, or an older
    release wrote it) goes once it is older than ``unclaimed_max_age_seconds``. Returns how many were removed."""
    if not scratch.is_dir():
        return 0
    removed = 0
    folders = [folder for prefix in PREFIXES for folder in scratch.glob(f"{prefix}*")]
    for folder in folders:
        try:
            with (folder / OWNER_FILE).open("rb") as owner:
                try:
                    fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner lives
                shutil.rmtree(folder, ignore_errors=True)  # removed while holding the lock
                removed += 1
        except FileNotFoundError:
            try:
                age = time.time() - os.stat(folder).st_mtime
            except FileNotFoundError:
                continue  # released meanwhile
            if age > unclaimed_max_age_seconds:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed
