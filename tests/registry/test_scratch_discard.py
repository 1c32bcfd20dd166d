"""An upload's scratch is removed once its inspection ends, however it ends, also when a stopping server's
executor cancelled the inspection before it ran."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tt_server.registry.service import discard_scratch
from tt_server.storage import scratch


async def test_an_inspection_cancelled_by_the_executors_shutdown_does_not_hang_the_clean_up(tmp_path: Path) -> None:
    claimed = scratch.claim(tmp_path / f"{scratch.UPLOAD_PREFIX}cancelled")
    executor = ThreadPoolExecutor(max_workers=1)
    busy = threading.Event()
    executor.submit(busy.wait)  # the one thread is taken: the inspection waits in the queue
    inspecting = executor.submit(lambda: "inspected")
    executor.shutdown(wait=False, cancel_futures=True)  # what the server's stop does
    try:
        await asyncio.wait_for(asyncio.to_thread(discard_scratch, claimed, inspecting), 30)
    finally:
        busy.set()
    assert inspecting.cancelled()
    assert not claimed.path.exists()


async def test_the_clean_up_waits_for_an_inspection_still_running(tmp_path: Path) -> None:
    claimed = scratch.claim(tmp_path / f"{scratch.UPLOAD_PREFIX}running")
    executor = ThreadPoolExecutor(max_workers=1)
    started, finish = threading.Event(), threading.Event()
    seen: list[bool] = []

    def inspect() -> None:
        started.set()
        finish.wait()
        seen.append(claimed.path.exists())  # its files are still there while it runs
        raise ValueError("not a model")

    inspecting = executor.submit(inspect)
    started.wait()
    discarding = asyncio.ensure_future(asyncio.to_thread(discard_scratch, claimed, inspecting))
    await asyncio.sleep(0.2)
    assert not discarding.done() and claimed.path.exists()
    finish.set()
    await asyncio.wait_for(discarding, 30)
    assert seen == [True] and not claimed.path.exists()
    executor.shutdown()
