"""Scratch folders claimed by a lock: a live owner's folder is never swept, a killed owner's is, at once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tt_server.storage import scratch

# A process that claims a folder, says so, and waits to be killed.
_OWNER = """
import sys, time
from pathlib import Path
from tt_server.storage import scratch
held = scratch.claim(Path(sys.argv[1]))
print("claimed", flush=True)
time.sleep(600)
"""


async def _claim_in_another_process(folder: Path) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OWNER, str(folder), stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), 60) == b"claimed\n"
    return process


async def test_a_killed_owners_folder_is_swept_at_once_and_a_live_ones_never(tmp_path: Path) -> None:
    live = tmp_path / f"{scratch.TRAIN_PREFIX}live"
    killed = tmp_path / f"{scratch.UPLOAD_PREFIX}killed"
    owners = [await _claim_in_another_process(folder) for folder in (live, killed)]
    try:
        (killed / "artifact").write_bytes(b"x" * 1000)
        os.utime(live, (0, 0))  # old does not matter: a live owner keeps its folder whatever its age
        assert scratch.sweep_abandoned(tmp_path, unclaimed_max_age_seconds=3600) == 0
        owners[1].send_signal(signal.SIGKILL)
        await owners[1].wait()
        assert scratch.sweep_abandoned(tmp_path, unclaimed_max_age_seconds=3600) == 1
        assert not killed.exists()
        assert live.exists() and (live / scratch.OWNER_FILE).exists()
    finally:
        for owner in owners:
            if owner.returncode is None:
                owner.kill()
                await owner.wait()


def test_this_processs_own_claims_are_not_swept(tmp_path: Path) -> None:
    held = scratch.claim(tmp_path / f"{scratch.UPLOAD_PREFIX}mine")
    (held.path / "artifact").write_bytes(b"x")
    assert scratch.sweep_abandoned(tmp_path, unclaimed_max_age_seconds=0) == 0  # flock: per open file, not process
    assert held.path.exists()
    held.release()
    assert not held.path.exists()
    held.release()  # harmless twice


def test_folders_without_an_owner_go_by_age_and_others_are_left(tmp_path: Path) -> None:
    old = tmp_path / f"{scratch.UPLOAD_PREFIX}old-release"
    young = tmp_path / f"{scratch.TRAIN_PREFIX}being-created"
    unrelated = tmp_path / "model-cache"
    for folder in (old, young, unrelated):
        folder.mkdir()
    an_hour_ago = time.time() - 3601
    os.utime(old, (an_hour_ago, an_hour_ago))
    os.utime(unrelated, (an_hour_ago, an_hour_ago))
    assert scratch.sweep_abandoned(tmp_path, unclaimed_max_age_seconds=3600) == 1
    assert not old.exists() and young.exists() and unrelated.exists()


def test_a_released_owner_file_leaves_its_folder_to_the_sweep(tmp_path: Path) -> None:
    # An owner file whose lock nobody holds (its process ended without removing the folder) is abandoned.
    folder = tmp_path / f"{scratch.TRAIN_PREFIX}ended"
    folder.mkdir()
    (folder / scratch.OWNER_FILE).touch()
    assert scratch.sweep_abandoned(tmp_path, unclaimed_max_age_seconds=3600) == 1
    assert not folder.exists()


def test_a_folder_cannot_be_claimed_twice(tmp_path: Path) -> None:
    held = scratch.claim(tmp_path / f"{scratch.TRAIN_PREFIX}once")
    try:
        with pytest.raises(OSError):
            scratch.claim(held.path)
    finally:
        held.release()
