"""JobRunner: settles job deliveries, shared by tt-worker processes and the embedded worker.

The delivery side of a job: messages (ack, nack, dead-letter), the lease and the attempt state machine. The
work itself (parse -> infer -> write) is ``attempt.py``'s ``AttemptPipeline``; the two meet at one hook,
``_conclude``, which turns how the pipeline ended (``AttemptEnd``) into a job state and an ``Outcome``.

One delivery (``handle``):

    read the job -> finished? ack, nothing to do (a redelivered or duplicate message)
                 -> out of attempts? FAILED, dead-letter the message (poison)
                 -> lease it (a new attempt number) -> held by a live lease elsewhere? keep the message and
                    wait until that attempt ends or its lease runs out
    run the attempt (heartbeat beside it) -> _conclude -> ack, or nack to hand the job back (retry, shutdown)

The heartbeat writes progress and renews the lease every ``job_progress_interval_seconds``; when the write
finds the attempt no longer holds the job (cancelled, or taken over after the lease ran out) the pipeline
stops at the next batch. The result is committed only if the attempt still holds the job, so only one attempt
can ever succeed; other attempts' result objects are deleted then (or, for attempts that died, swept through
the blob GC table, where the pipeline records every result key before it writes it: the sweep deletes the
object and, in a caller's bucket, aborts an unfinished upload to that key).

Endings: a pipeline that FAILED fails the job at once; RETRY hands it back for another attempt, up to
``job_max_attempts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import time
import uuid

from tt_server import metrics
from tt_server.config import Settings
from tt_server.errors import DeadlineExceeded, NotFound, Unavailable
from tt_server.jobs.attempt import RESULT_GC_DELAY_US, Attempt, AttemptEnd, AttemptPipeline, Ending, attempts_prefix
from tt_server.jobs.notify import JobNotifier
from tt_server.runtime.manager import ModelManager
from tt_server.storage.blobs import BlobStore
from tt_server.storage.broker import Delivery
from tt_server.storage.jobs import JobStore
from tt_server.storage.outbox import BlobOutbox
from tt_server.types import Job, JobState

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    """How a delivery ended (also what tests and logs look at)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the job failed for good (bad input, model cannot run it)
    CANCELLED = "cancelled"
    LOST = "lost"  # another attempt took the job over; this one stopped and wrote nothing
    RETRY = "retry"  # this attempt failed for a reason that may pass; the job went back to the queue
    RELEASED = "released"  # shutting down: the job went back to the queue uncharged
    GAVE_UP = "gave_up"  # out of attempts: FAILED and dead-lettered
    NOOP = "noop"  # the job was already finished (a redelivered or duplicate message)
    UNKNOWN = "unknown"  # no such job: dead-lettered


def worker_id() -> str:
    """Identifies a worker in ``lease_owner``: host, process and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobRunner:
    """Lifecycle: ``stop()`` makes running attempts release their jobs at the next batch and waiting
    deliveries go back to the queue; ``close()`` frees the threads. Safe for concurrent ``handle`` calls."""

    def __init__(
        self,
        store: JobStore,
        blobs: BlobStore,
        models: ModelManager,
        settings: Settings,
        owner: str | None = None,
        notifier: JobNotifier | None = None,
        concurrency: int = 1,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._settings = settings
        self.owner = owner or worker_id()
        self._notifier = notifier
        self._stopping = asyncio.Event()
        # Result objects: reserved in the blob GC table by the pipeline, claimed by commit_job, else discarded.
        # Not due before a write may still be running (TT_STALE_WRITE_SECONDS): the sweep aborts a due key's
        # unfinished upload in a caller's bucket, as abort_stale_writes does in the server's own.
        delay_us = max(RESULT_GC_DELAY_US, int(settings.stale_write_seconds * 1_000_000))
        self._results = BlobOutbox(blobs, store, delay_us=delay_us, what="job result")
        self._pipeline = AttemptPipeline(self._results, blobs, models, settings, self._stopping, concurrency)

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        self._pipeline.close()

    # --- deliveries ------------------------------------------------------------------------------------------
    async def handle(self, delivery: Delivery) -> Outcome:
        """Settle one delivery, running its job if it is this worker's to run."""
        job_id = delivery.job_id
        s = self._settings
        while True:
            if self._stopping.is_set():
                await delivery.nack(requeue=True)
                return Outcome.RELEASED
            try:
                job = await self._store.get_job(job_id)
                if job.state.terminal:
                    await delivery.ack()
                    return Outcome.NOOP
                now_us = time.time_ns() // 1000
                leasable = job.state is JobState.QUEUED or (job.lease_until_us or 0) < now_us
                if leasable and job.attempts >= s.job_max_attempts:
                    if await self._store.give_up_job(job_id, s.job_max_attempts, _give_up_message(job)):
                        # Dead-letter first: the row says FAILED from here on, and a caller who sees that should
                        # find the message in the dead-letter queue, not after the attempts' leftovers are gone.
                        await delivery.nack(requeue=False)
                        metrics.JOBS_FINISHED.labels(job.model_name, str(job.model_version), "FAILED").inc()
                        log.error("job failed: out of attempts; message dead-lettered", extra={"job": job_id})
                        self._notify(job_id)
                        await self._discard_other_attempts(job, kept="")
                        return Outcome.GAVE_UP
                    continue
                attempt = await self._store.lease_job(job_id, self.owner, s.job_lease_seconds) if leasable else None
            except NotFound:
                log.warning("message for an unknown job dead-lettered", extra={"job": job_id})
                await delivery.nack(requeue=False)
                return Outcome.UNKNOWN
            except Unavailable:
                log.warning("job store unavailable; retrying", extra={"throttle": True, "job": job_id})
                await self._pause(1.0)
                continue
            if attempt is None:
                # Another attempt holds the job (this message is a duplicate, or was redelivered after a lost
                # connection or a crash). Keep it: if that attempt dies, this worker takes over when its lease
                # runs out; if it finishes, this message is acked as done.
                remaining = ((job.lease_until_us or now_us) - now_us) / 1e6
                await self._pause(min(1.0, max(0.05, remaining + 0.05)))
                continue
            self._notify(job_id)
            outcome = await self._run_attempt(job, attempt)
            await self._settle(delivery, job, outcome)
            return outcome

    async def _settle(self, delivery: Delivery, job: Job, outcome: Outcome) -> None:
        if outcome is Outcome.RETRY:
            # Back off before handing the job back, so a passing outage does not burn every attempt at once.
            await self._pause(min(30.0, self._settings.job_retry_delay_seconds * (job.attempts + 1)))
            await delivery.nack(requeue=True)
        elif outcome is Outcome.RELEASED:
            await delivery.nack(requeue=True)
        else:
            await delivery.ack()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once on ``stop()``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _notify(self, job_id: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(job_id)

    # --- one attempt -----------------------------------------------------------------------------------------
    async def _run_attempt(self, job: Job, number: int) -> Outcome:
        attempt = Attempt(job.id, number, input_size=job.input_size)
        context: dict[str, object] = {
            "job": job.id,
            "attempt": number,
            "model": job.model_name,
            "version": job.model_version,
        }
        log.info("job attempt started", extra=context)
        labels = (job.model_name, str(job.model_version))
        metrics.JOB_ATTEMPTS.labels(*labels).inc()
        if job.state is JobState.RUNNING:  # leased while RUNNING: the attempt that held it let its lease run out
            metrics.JOB_LEASE_EXPIRIES.labels(*labels).inc()
        running = metrics.JOBS_RUNNING.labels(*labels)
        running.inc()
        heartbeat = asyncio.create_task(self._heartbeat(attempt), name=f"tt-job-heartbeat-{job.id}")
        try:
            end = await self._pipeline.run(job, attempt, context)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        try:
            return await self._conclude(job, attempt, end, context)
        except (Unavailable, DeadlineExceeded) as e:
            # The store went down after the pipeline ended: hand the job back (its lease runs out meanwhile).
            return await self._retry(job.id, number, e.message, context)
        finally:
            running.dec()

    async def _conclude(self, job: Job, attempt: Attempt, end: AttemptEnd, context: dict[str, object]) -> Outcome:
        """The outcome hook: how the pipeline ended -> the job's next state (only if this attempt still holds
        it) and the delivery's outcome."""
        number = attempt.number
        if end.ending is Ending.WRITTEN:
            assert end.result is not None
            key, size = end.result.key, end.result.size
            if not await self._store.commit_job(job.id, number, key, size, attempt.progress(final=True)):
                await self._results.discard(key)
                return await self._lost(job.id, context)
            self._notify(job.id)
            metrics.JOBS_FINISHED.labels(job.model_name, str(job.model_version), "SUCCEEDED").inc()
            await self._discard_other_attempts(job, key)
            log.info("job succeeded", extra={**context, "rows": attempt.rows_done, "bytes": size, **attempt.timings})
            return Outcome.SUCCEEDED
        if end.ending is Ending.STOPPING:
            released = await self._store.release_job(job.id, number, "", charge=False)
            log.info("job released at shutdown", extra=context)
            return Outcome.RELEASED if released else await self._lost(job.id, context)
        if end.ending is Ending.LOST:
            return await self._lost(job.id, context)
        if end.ending is Ending.FAILED:
            return await self._fail(job, number, end.error, attempt, context)
        return await self._retry(job.id, number, end.error, context)

    async def _heartbeat(self, attempt: Attempt) -> None:
        s = self._settings
        while True:
            await asyncio.sleep(s.job_progress_interval_seconds)
            try:
                held = await self._store.update_job_progress(
                    attempt.job_id, attempt.number, attempt.progress(), s.job_lease_seconds
                )
            except Unavailable:
                log.warning("could not write job progress; retrying", extra={"throttle": True, "job": attempt.job_id})
                continue
            if not held:
                attempt.lost = True
                return
            self._notify(attempt.job_id)

    # --- endings ---------------------------------------------------------------------------------------------
    async def _lost(self, job_id: str, context: dict[str, object]) -> Outcome:
        job = await self._store.get_job(job_id)
        if job.state is JobState.CANCELLED:
            log.info("job attempt stopped: cancelled", extra=context)
            await self._discard_other_attempts(job, kept="")
            return Outcome.CANCELLED
        log.warning("job attempt stopped: another attempt holds the job", extra={**context, "state": job.state.value})
        return Outcome.LOST

    async def _fail(self, job: Job, number: int, error: str, attempt: Attempt, context: dict[str, object]) -> Outcome:
        if await self._store.fail_job(job.id, number, error, attempt.progress()):
            metrics.JOBS_FINISHED.labels(str(context["model"]), str(context["version"]), "FAILED").inc()
            log.warning("job failed", extra={**context, "error": error})
            self._notify(job.id)
            await self._discard_other_attempts(job, kept="")
            return Outcome.FAILED
        return await self._lost(job.id, context)

    async def _retry(self, job_id: str, number: int, error: str, context: dict[str, object]) -> Outcome:
        try:
            released = await self._store.release_job(job_id, number, error, charge=True)
        except Unavailable:
            # The store is down too: the lease will run out and the redelivered message tries again.
            log.warning("job attempt failed and could not be released", extra={**context, "error": error})
            return Outcome.RETRY
        if not released:
            return await self._lost(job_id, context)
        log.warning("job attempt failed; the job goes back to the queue", extra={**context, "error": error})
        self._notify(job_id)
        return Outcome.RETRY

    async def _discard_other_attempts(self, job: Job, kept: str) -> None:
        """Delete results that attempts of the job wrote but never committed (an attempt that died between its
        write and its commit), once the job is finished, rather than a day later when their GC entries fall
        due. Only finished objects are listed; a dead attempt's unfinished upload waits for its GC entry."""
        try:
            keys = await self._blobs.list_keys(attempts_prefix(job))
        except Exception:
            log.warning("could not list old attempts' results", extra={"job": job.id}, exc_info=True)
            return
        for key in keys:
            if key != kept:
                await self._results.discard(key)


def _give_up_message(job: Job) -> str:
    why = (
        f"last error: {job.error}"
        if job.error
        else "each attempt ended without a result (the worker crashed or was killed)"
    )
    return f"gave up after {job.attempts} attempts; {why}"
