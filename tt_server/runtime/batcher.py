"""DynamicBatcher: merges concurrent requests for one servable into one model call.

Requests queue up while the inference thread is busy; when it frees up, everything queued (up to
``max_batch_rows``) is concatenated per input, run in one call, and the outputs are split back by row
ranges. A model call on the MLP costs ~50 us at 1 row and ~85 us at 64 rows, and each call also costs a
hand-off to the inference thread and back, so under load merging multiplies throughput. At low load a request
runs alone at once; under concurrent load (the last call merged several requests) the next call waits until as
many requests are queued as the last one merged, at most ``max_wait_s`` after the oldest arrived.

Only one batch per batcher is in flight; there is no long-lived task: the first submit into an idle
batcher starts a drain task, which ends when the queue is empty. So a batcher that the model manager has
dropped holds no resources and still serves whoever kept a handle to it.

Guarantees: an item whose deadline has passed is failed with ``DeadlineExceeded`` before it runs; a caller
cancelled while queued frees its rows at once and its rows never run; when a merged call fails, each of its
requests is retried alone, so one bad request cannot fail its neighbours; the drain loop survives anything.
Everything here runs on the event loop except the model call (and the concatenation feeding it), which runs
on ``executor``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from tt_server.errors import DeadlineExceeded, ResourceExhausted, TensorTriggerError, Unavailable
from tt_server.metrics import ServingSeries
from tt_server.runtime.activity import SERVING
from tt_server.runtime.observe import RequestObservation

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class InferenceError(RuntimeError):
    """A model call failed for a reason that is not the caller's; details are in the server log only."""


@dataclass(slots=True, eq=False)
class _Item:
    arrays: Arrays
    rows: int
    deadline: float | None  # time.monotonic() seconds
    future: asyncio.Future[Arrays]
    queued_at: float  # time.monotonic(), read only when max_wait_s > 0
    observation: RequestObservation | None
    taken: bool = field(default=False)  # out of the queue (running, or failed before running)


class DynamicBatcher:
    """Batches ``submit`` calls for one servable's ``run`` (blocking; called on ``executor``).

    ``merge`` is false for servables whose dim 0 is not a free batch dim: each request then runs alone.
    """

    def __init__(
        self,
        servable_run: RunFn,
        max_batch_rows: int,
        max_wait_s: float,
        max_queue_rows: int,
        executor: Executor,
        *,
        merge: bool = True,
        name: str = "",
        series: ServingSeries | None = None,
    ) -> None:
        self._run = servable_run
        self._max_batch_rows = max_batch_rows
        self._max_wait_s = max_wait_s
        self._max_queue_rows = max_queue_rows
        self._executor = executor
        self._merge = merge
        self._name = name
        self._last_batch_requests = 0
        self._series = series  # None: not counted (tests)
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._drain_task: asyncio.Task[None] | None = None
        self._filled: asyncio.Future[None] | None = None  # set while the drain waits for the queue to fill
        self._fill_target = 0
        self._closed = False
        # Counters for tests and metrics.
        self.batches_run = 0
        self.items_run = 0

    @property
    def executor(self) -> Executor:
        return self._executor

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def submit(
        self, arrays: Arrays, rows: int, deadline: float | None = None, observation: RequestObservation | None = None
    ) -> Arrays:
        """Run ``arrays`` (``rows`` rows, validated) in the next batch; return this request's outputs.
        ``observation`` gets the time the request waited in the queue and its model call's time.

        Raises ``ResourceExhausted`` when the queue is full, ``DeadlineExceeded`` when ``deadline`` passes
        before the request runs, ``Unavailable`` once the batcher is closed.
        """
        if self._closed:
            raise Unavailable(f"{self._name or 'the model'} is shutting down")
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExceeded("the deadline passed before the request was queued")
        # An empty queue takes any request, so a single request over the bound still runs (alone).
        if self._queued_rows and self._queued_rows + rows > self._max_queue_rows:
            raise ResourceExhausted(
                f"{self._name or 'the model'}'s queue is full ({self._queued_rows} rows waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        queued_at = time.monotonic() if self._max_wait_s > 0 or observation is not None else 0.0
        item = _Item(arrays, rows, deadline, loop.create_future(), queued_at, observation)
        self._queue.append(item)
        self._queued_rows += rows
        if self._filled is not None and len(self._queue) >= self._fill_target:
            _resolve(self._filled)
        if self._drain_task is None:
            self._drain_task = loop.create_task(self._drain(), name=f"tt-batcher-{self._name}")
        SERVING.enter()
        try:
            return await item.future
        except asyncio.CancelledError:
            if not item.taken:  # still queued: free its rows now; _take skips it (its future is cancelled)
                self._queued_rows -= item.rows
            raise
        finally:
            SERVING.leave()

    async def _drain(self) -> None:
        try:
            while self._queue:
                if (
                    self._max_wait_s > 0
                    and self._last_batch_requests > 1
                    and self._queued_rows < self._max_batch_rows
                    and not self._closed
                ):
                    # As TF Serving's batch timeout, the oldest request waits at most max_wait_s for others, but
                    # only under concurrent load (the last call merged several requests; a lone caller never
                    # waits), and only until as many requests are queued as the last call merged: under steady
                    # load that many are on their way, and a fixed wait made moderate loads pay all of it.
                    wait = self._queue[0].queued_at + self._max_wait_s - time.monotonic()
                    if wait > 0:
                        await self._wait_for(self._last_batch_requests, wait)
                batch = self._take()
                if batch:
                    await self._run_batch(batch)
        except Exception:  # a bug: fail what waits (nothing may hang); the next submit starts afresh
            log.exception("batcher failed", extra={"servable": self._name})
            self._fail_queued(Unavailable(f"{self._name or 'the model'} failed; retry"))
        except BaseException:  # cancelled: the event loop is shutting down
            self._fail_queued(Unavailable(f"{self._name or 'the model'} stopped serving"))
            raise
        finally:
            self._drain_task = None

    async def _wait_for(self, requests: int, seconds: float) -> None:
        """Until ``requests`` are queued (as many as the last call merged: under steady load that many are on
        their way) or ``seconds`` have passed, whichever comes first."""
        if len(self._queue) >= requests:
            return
        loop = asyncio.get_running_loop()
        filled: asyncio.Future[None] = loop.create_future()
        self._fill_target, self._filled = requests, filled
        timer = loop.call_later(seconds, _resolve, filled)
        try:
            await filled
        finally:
            timer.cancel()
            self._filled = None

    def _take(self) -> list[_Item]:
        """Pop the next batch: queued items in order, up to ``max_batch_rows`` (one item at least)."""
        batch: list[_Item] = []
        rows = 0
        now = time.monotonic()
        queue = self._queue
        while queue:
            item = queue[0]
            if item.future.done():  # cancelled while queued; its rows were freed then
                queue.popleft()
                continue
            if batch and (not self._merge or rows + item.rows > self._max_batch_rows):
                break
            queue.popleft()
            item.taken = True
            self._queued_rows -= item.rows
            if item.deadline is not None and item.deadline <= now:
                item.future.set_exception(DeadlineExceeded("the deadline passed while the request waited"))
                continue
            batch.append(item)
            rows += item.rows
        return batch

    async def _run_batch(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        try:
            outputs, started, seconds = await loop.run_in_executor(
                self._executor, self._run_merged, [i.arrays for i in batch]
            )
            self.batches_run += 1
            self.items_run += len(batch)
            self._last_batch_requests = len(batch)
            if self._series is not None:
                self._observe(batch, started, seconds)
            self._deliver(batch, outputs)
        except asyncio.CancelledError:
            self._fail(batch, Unavailable(f"{self._name or 'the model'} stopped serving"))
            raise
        except Exception as e:
            if len(batch) > 1:
                # Find out which request broke the merged call instead of failing all of them.
                for item in batch:
                    if not item.future.done():
                        await self._run_batch([item])
                return
            self._fail(batch, e)

    def _observe(self, batch: list[_Item], started: float, seconds: float) -> None:
        series = self._series
        assert series is not None
        rows = 0
        for item in batch:
            rows += item.rows
            if item.observation is not None:
                item.observation.queue = max(0.0, started - item.queued_at)
                item.observation.compute = seconds
        series.calls += 1
        series.call.observe(seconds)
        series.batch_rows.observe(rows)
        series.batch_requests.observe(len(batch))
        series.queue_rows = self._queued_rows

    def _run_merged(self, parts: list[Arrays]) -> tuple[Arrays, float, float]:
        """On the inference thread: concatenate (off the event loop: it copies), run. Returns the outputs, when
        the call started (``time.monotonic()``, the end of the requests' queueing) and how long it took."""
        started = time.monotonic()
        if len(parts) == 1:
            outputs = self._run(parts[0])
        else:
            merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
            outputs = self._run(merged)
        return outputs, started, time.monotonic() - started

    def _deliver(self, batch: list[_Item], outputs: Arrays) -> None:
        if len(batch) == 1:
            item = batch[0]
            if not item.future.done():
                item.future.set_result(outputs)
            return
        total = sum(i.rows for i in batch)
        for name, array in outputs.items():
            if array.shape[:1] != (total,):
                raise InferenceError(f"output {name!r} has shape {array.shape} for a batch of {total} rows")
        start = 0
        for item in batch:
            end = start + item.rows
            if not item.future.done():  # its caller may have gone meanwhile
                item.future.set_result({name: array[start:end] for name, array in outputs.items()})
            start = end

    def _fail(self, batch: list[_Item], error: Exception) -> None:
        if not isinstance(error, TensorTriggerError):
            log.error("model call failed", exc_info=error, extra={"servable": self._name})
            error = InferenceError("the model failed to run on this input")
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    def _fail_queued(self, error: TensorTriggerError) -> None:
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.taken = True
                self._queued_rows -= item.rows
                item.future.set_exception(error)

    async def close(self, drain: bool = True) -> None:
        """Refuse new requests; run what is queued (``drain``) or fail it with ``Unavailable``; wait for the
        batch in flight."""
        self._closed = True
        if not drain:
            self._fail_queued(Unavailable(f"{self._name or 'the model'} was unloaded"))
        task = self._drain_task
        if task is not None:
            await asyncio.shield(task)
