"""The dynamic batcher: merging and splitting, the queue bound, deadlines, cancellation, failures, close."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests import models
from tests.runtime.helpers import load
from tt_server.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from tt_server.runtime.batcher import DynamicBatcher, InferenceError
from tt_server.runtime.servable import Servable
from tt_server.types import ModelFormat

Arrays = dict[str, np.ndarray]


class Gate:
    """A model stand-in: doubles ``x``, records the rows of each call, and can be held shut so that requests
    pile up behind a running call."""

    def __init__(self, fail_on: Callable[[np.ndarray], bool] | None = None) -> None:
        self.calls: list[list[float]] = []  # the x values (one per row) of each call
        self.opened = threading.Event()
        self.opened.set()
        self.entered = threading.Event()
        self._fail_on = fail_on

    def __call__(self, arrays: Arrays) -> Arrays:
        self.entered.set()
        assert self.opened.wait(10)
        x = arrays["x"]
        self.calls.append(x[:, 0].tolist())
        if self._fail_on is not None and self._fail_on(x):
            raise ValueError("poisoned batch")
        return {"y": x * 2, "z": x[:, :1] + 1}

    async def hold(self, batcher: DynamicBatcher, rows: int = 1) -> asyncio.Task[Arrays]:
        """Start a call and keep it running until ``release``."""
        self.opened.clear()
        self.entered.clear()
        task = asyncio.create_task(batcher.submit(rows_of(rows, 1000.0), rows))
        assert await asyncio.to_thread(self.entered.wait, 10)
        return task

    def release(self) -> None:
        self.opened.set()


def rows_of(n: int, start: float) -> Arrays:
    """``n`` rows of two columns; column 0 numbers the rows from ``start`` so calls can be traced."""
    x = np.stack([np.arange(n, dtype=np.float32) + start, np.full(n, 0.5, np.float32)], axis=1)
    return {"x": x}


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1, thread_name_prefix="test-inference")
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    g = Gate()
    yield g
    g.release()  # never leave the inference thread blocked


def batcher_for(run: Callable[[Arrays], Arrays], executor: ThreadPoolExecutor, **options: object) -> DynamicBatcher:
    settings: dict = {"max_batch_rows": 64, "max_wait_s": 0.0, "max_queue_rows": 1000, **options}
    return DynamicBatcher(run, executor=executor, name="test:1", **settings)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Servable:
    out = tmp_path_factory.mktemp("batcher")
    return load(models.mlp_keras(out), ModelFormat.KERAS, models.MLP_SIGNATURE, Path(out) / "work")


async def test_concurrent_requests_merge_into_fewer_calls_with_per_request_answers(
    mlp: Servable, executor: ThreadPoolExecutor
) -> None:
    call_rows: list[int] = []

    def run(arrays: Arrays) -> Arrays:
        call_rows.append(arrays["features"].shape[0])
        return mlp.run(arrays)

    batcher = batcher_for(run, executor, max_batch_rows=16)
    rng = np.random.default_rng(3)
    requests = [{"features": rng.random((int(rng.integers(1, 6)), 4), dtype=np.float32)} for _ in range(50)]
    results = await asyncio.gather(*[batcher.submit(r, r["features"].shape[0]) for r in requests])

    assert batcher.batches_run == len(call_rows) < 50
    assert all(rows <= 16 for rows in call_rows)
    assert sum(call_rows) == sum(r["features"].shape[0] for r in requests)
    for request, result in zip(requests, results, strict=True):
        alone = mlp.run(request)["score"]
        assert result["score"].shape == alone.shape
        assert np.max(np.abs(result["score"] - alone)) <= 1e-6


async def test_a_request_bigger_than_a_batch_runs_alone(gate: Gate, executor: ThreadPoolExecutor) -> None:
    batcher = batcher_for(gate, executor, max_batch_rows=4)
    small, big = await asyncio.gather(batcher.submit(rows_of(2, 0), 2), batcher.submit(rows_of(10, 100), 10))
    assert [len(c) for c in gate.calls] == [2, 10]
    np.testing.assert_array_equal(big["y"], rows_of(10, 100)["x"] * 2)
    np.testing.assert_array_equal(small["z"], rows_of(2, 0)["x"][:, :1] + 1)


async def test_requests_queue_behind_a_running_call_then_run_together(gate: Gate, executor: ThreadPoolExecutor) -> None:
    batcher = batcher_for(gate, executor)
    first = await gate.hold(batcher)
    queued = [asyncio.create_task(batcher.submit(rows_of(3, 10 * i), 3)) for i in range(5)]
    await asyncio.sleep(0.05)  # the event loop runs on while the model is busy
    assert batcher.queued_rows == 15
    gate.release()
    await first
    results = await asyncio.gather(*queued)
    assert [len(c) for c in gate.calls] == [1, 15]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], rows_of(3, 10 * i)["x"] * 2)
    assert batcher.queued_rows == 0


async def test_a_full_queue_refuses_requests(gate: Gate, executor: ThreadPoolExecutor) -> None:
    batcher = batcher_for(gate, executor, max_queue_rows=100)
    running = await gate.hold(batcher)
    waiting = [asyncio.create_task(batcher.submit(rows_of(n, 0), n)) for n in (60, 40)]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await batcher.submit(rows_of(1, 0), 1)
    gate.release()
    await asyncio.gather(running, *waiting)
    # An empty queue takes a request over the bound: it could never run otherwise.
    result = await batcher.submit(rows_of(500, 0), 500)
    assert result["y"].shape == (500, 2)


async def test_expired_requests_are_dropped_before_they_run(gate: Gate, executor: ThreadPoolExecutor) -> None:
    batcher = batcher_for(gate, executor)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(rows_of(1, 0), 1, deadline=time.monotonic() - 1)
    running = await gate.hold(batcher)
    late = asyncio.create_task(batcher.submit(rows_of(2, 500), 2, deadline=time.monotonic() + 0.05))
    on_time = asyncio.create_task(batcher.submit(rows_of(2, 700), 2, deadline=time.monotonic() + 60))
    await asyncio.sleep(0.1)
    gate.release()
    await running
    with pytest.raises(DeadlineExceeded):
        await late
    await on_time
    assert gate.calls[1] == [700.0, 701.0]  # the expired rows never reached the model


async def test_a_cancelled_caller_frees_its_rows_and_they_never_run(gate: Gate, executor: ThreadPoolExecutor) -> None:
    batcher = batcher_for(gate, executor)
    running = await gate.hold(batcher)
    doomed = asyncio.create_task(batcher.submit(rows_of(7, 300), 7))
    kept = asyncio.create_task(batcher.submit(rows_of(2, 900), 2))
    await asyncio.sleep(0)
    assert batcher.queued_rows == 9
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert batcher.queued_rows == 2
    gate.release()
    await asyncio.gather(running, kept)
    assert gate.calls[1:] == [[900.0, 901.0]]


async def test_a_failing_call_fails_only_its_own_requests(executor: ThreadPoolExecutor) -> None:
    gate = Gate(fail_on=lambda x: bool((x[:, 0] == 666).any()))
    batcher = batcher_for(gate, executor)
    starts = [0, 10, 666, 20, 30]
    results = await asyncio.gather(*[batcher.submit(rows_of(2, s), 2) for s in starts], return_exceptions=True)
    for start, result in zip(starts, results, strict=True):
        if start == 666:
            assert isinstance(result, InferenceError)
            assert "poisoned" not in str(result)  # internals stay in the log
        else:
            assert isinstance(result, dict)
            np.testing.assert_array_equal(result["y"], rows_of(2, start)["x"] * 2)
    # The batcher lives on.
    after = await batcher.submit(rows_of(1, 5), 1)
    assert after["y"][0, 0] == 10.0


async def test_domain_errors_reach_the_caller_unchanged(executor: ThreadPoolExecutor) -> None:
    def unloaded(arrays: Arrays) -> Arrays:
        raise Unavailable("model 'm' version 1 was unloaded")

    batcher = batcher_for(unloaded, executor)
    with pytest.raises(Unavailable, match="was unloaded"):
        await batcher.submit(rows_of(1, 0), 1)


async def test_outputs_that_lost_the_batch_dim_fail_the_merged_call(executor: ThreadPoolExecutor) -> None:
    calls = 0

    def summed(arrays: Arrays) -> Arrays:
        nonlocal calls
        calls += 1
        return {"total": arrays["x"].sum(axis=0)}

    batcher = batcher_for(summed, executor)
    results = await asyncio.gather(*[batcher.submit(rows_of(3, 0), 3) for _ in range(3)], return_exceptions=True)
    # Merged, the output cannot be split; each request is then retried alone and succeeds.
    assert calls == 4
    assert all(isinstance(r, dict) and r["total"].shape == (2,) for r in results)


async def test_max_wait_gathers_requests_that_arrive_a_little_later(gate: Gate, executor: ThreadPoolExecutor) -> None:
    batcher = batcher_for(gate, executor, max_wait_s=0.2)
    await asyncio.gather(batcher.submit(rows_of(1, 1), 1), batcher.submit(rows_of(1, 2), 1))  # concurrent load

    async def later() -> Arrays:
        await asyncio.sleep(0.02)
        return await batcher.submit(rows_of(1, 50), 1)

    await asyncio.gather(batcher.submit(rows_of(1, 0), 1), later())
    assert gate.calls == [[1.0, 2.0], [0.0, 50.0]]


async def test_the_wait_ends_once_as_many_requests_are_queued_as_the_last_call_merged(
    gate: Gate, executor: ThreadPoolExecutor
) -> None:
    batcher = batcher_for(gate, executor, max_wait_s=5.0)
    await asyncio.gather(batcher.submit(rows_of(1, 1), 1), batcher.submit(rows_of(1, 2), 1))  # merged two

    async def later() -> Arrays:
        await asyncio.sleep(0.02)
        return await batcher.submit(rows_of(1, 50), 1)

    started = time.monotonic()
    await asyncio.gather(batcher.submit(rows_of(1, 0), 1), later())
    # The second request completed the pair the last call merged: the call ran then, not 5 s after the first.
    assert time.monotonic() - started < 1.0
    assert gate.calls == [[1.0, 2.0], [0.0, 50.0]]


async def test_a_lone_caller_never_waits(gate: Gate, executor: ThreadPoolExecutor) -> None:
    batcher = batcher_for(gate, executor, max_wait_s=5.0)
    started = time.monotonic()
    for i in range(3):  # one request at a time: each runs at once, alone
        await batcher.submit(rows_of(1, i), 1)
    assert time.monotonic() - started < 1.0
    assert gate.calls == [[0.0], [1.0], [2.0]]


async def test_unmergeable_servables_run_each_request_alone(gate: Gate, executor: ThreadPoolExecutor) -> None:
    batcher = batcher_for(gate, executor, merge=False)
    await asyncio.gather(*[batcher.submit(rows_of(1, i), 1) for i in range(4)])
    assert gate.calls == [[0.0], [1.0], [2.0], [3.0]]


async def test_close_runs_what_is_queued_then_refuses(gate: Gate, executor: ThreadPoolExecutor) -> None:
    batcher = batcher_for(gate, executor)
    running = await gate.hold(batcher)
    queued = asyncio.create_task(batcher.submit(rows_of(2, 0), 2))
    await asyncio.sleep(0)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    gate.release()
    await closing
    assert (await queued)["y"].shape == (2, 2)
    await running
    with pytest.raises(Unavailable):
        await batcher.submit(rows_of(1, 0), 1)


async def test_close_without_draining_fails_what_is_queued(gate: Gate, executor: ThreadPoolExecutor) -> None:
    batcher = batcher_for(gate, executor)
    running = await gate.hold(batcher)
    queued = asyncio.create_task(batcher.submit(rows_of(2, 0), 2))
    await asyncio.sleep(0)
    closing = asyncio.create_task(batcher.close(drain=False))
    await asyncio.sleep(0)
    gate.release()
    await closing
    await running  # the call in flight finishes
    with pytest.raises(Unavailable):
        await queued
