"""JobWorker: consumes job messages and runs them with a JobRunner; EmbeddedWorker: the same inside the server.

A worker takes up to ``concurrency`` deliveries at once (the broker's prefetch) and handles each in a task of
its own. Every ``job_sweep_interval_seconds`` it also republishes jobs nobody has touched for
``job_requeue_after_seconds`` (a job stored but never published because its creator crashed in between, or a
message lost with its broker): the store claims each stale job for one sweeper, and duplicates are harmless.

Shutdown (``stop``): stop taking messages; running attempts release their jobs at the next batch (uncharged)
and nack their messages for redelivery; whatever still runs after the grace period is cancelled, its lease
runs out and its message is redelivered when the connection closes. Nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from tt_server import metrics
from tt_server.config import Settings
from tt_server.jobs.runner import JobRunner, Outcome
from tt_server.storage.broker import Broker, Delivery
from tt_server.storage.jobs import JobStore

log = logging.getLogger(__name__)

SWEEP_LIMIT = 1000
QUEUE_SAMPLE_SECONDS = 5.0


class JobWorker:
    def __init__(
        self, runner: JobRunner, broker: Broker, store: JobStore, settings: Settings, concurrency: int
    ) -> None:
        self.runner = runner
        self._broker = broker
        self._store = store
        self._settings = settings
        self._concurrency = max(1, concurrency)
        self._tasks: set[asyncio.Task[Outcome]] = set()

    async def run(self) -> None:
        """Consume until ``stop()``; returns once every delivery taken is settled."""
        sweeper = asyncio.create_task(self._sweep_forever(), name="tt-job-sweeper")
        sampler = asyncio.create_task(self._sample_queues_forever(), name="tt-job-queue-sampler")
        try:
            async for delivery in self._broker.consume(self._concurrency):
                task = asyncio.create_task(self._handle(delivery), name=f"tt-job-{delivery.job_id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            sweeper.cancel()
            sampler.cancel()
            await asyncio.gather(sweeper, sampler, return_exceptions=True)

    async def stop(self, grace: float) -> None:
        """Release running jobs at their next batch, wait up to ``grace`` seconds, then cancel the rest."""
        self.runner.stop()
        await self._broker.stop_consuming()
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _handle(self, delivery: Delivery) -> Outcome:
        try:
            outcome = await self.runner.handle(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug or an outage between attempts: hand the message back; the job's lease protects it.
            log.exception("job delivery failed; message requeued", extra={"job": delivery.job_id})
            with contextlib.suppress(Exception):
                await delivery.nack(requeue=True)
            outcome = Outcome.RETRY
        # A log line, not a list kept for tests: a tt-worker runs for months.
        log.debug("job delivery settled", extra={"job": delivery.job_id, "outcome": outcome.value})
        return outcome

    async def republish(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            await self._broker.publish(job_id)
        if job_ids:
            log.info("jobs republished", extra={"count": len(job_ids)})

    async def _sample_queues_forever(self) -> None:
        """The broker's queue depths as gauges (every worker samples the same queues: read them with max())."""
        waiting, dead = metrics.BROKER_QUEUE.labels("jobs"), metrics.BROKER_QUEUE.labels("dead_letter")
        while True:
            try:
                waiting.set(await self._broker.queued())
                dead.set(await self._broker.dead_lettered())
            except Exception:  # the broker is down: keep the last values, the outage shows elsewhere
                log.debug("could not sample the broker's queues", exc_info=True)
            await asyncio.sleep(QUEUE_SAMPLE_SECONDS)

    async def _sweep_forever(self) -> None:
        s = self._settings
        while True:
            await asyncio.sleep(s.job_sweep_interval_seconds)
            try:
                await self.republish(await self._store.stale_jobs(s.job_requeue_after_seconds, SWEEP_LIMIT))
            except Exception:
                log.warning("stale job sweep failed; will retry", exc_info=True, extra={"throttle": True})


class EmbeddedWorker:
    """The job worker of the embedded mode: runs inside the server process on its broker (a ``LocalBroker``)
    with the ``runner`` the composition root built (over the server's model manager). ``start()`` first
    republishes every unfinished job, since an in-process queue does not survive a restart; the jobs' rows did."""

    def __init__(
        self, runner: JobRunner, broker: Broker, store: JobStore, settings: Settings, concurrency: int
    ) -> None:
        self.worker = JobWorker(runner, broker, store, settings, concurrency)
        self._store = store
        self._settings = settings
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.worker.republish(await self._store.unfinished_jobs(limit=1_000_000))
        self._task = asyncio.create_task(self.worker.run(), name="tt-embedded-worker")

    async def stop(self, grace: float) -> None:
        if self._task is None:
            return
        await self.worker.stop(grace)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None  # the runner is closed by whoever built it


def worker_model_cache(settings: Settings) -> Path:
    return settings.data_dir / "worker-model-cache"
