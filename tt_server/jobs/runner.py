"""JobRunner: runs job deliveries to completion, shared by tt-worker processes and the embedded worker.

One delivery (``handle``):

    read the job -> finished? ack, nothing to do (a redelivered or duplicate message)
                 -> out of attempts? FAILED, dead-letter the message (poison)
                 -> lease it (a new attempt number) -> held by a live lease elsewhere? keep the message and
                    wait until that attempt ends or its lease runs out
    run the attempt -> ack, or nack to hand the job back (retry, clean shutdown)

One attempt (``_run_attempt``): a pipeline of three stages with bounded queues between them, so memory stays
a few blocks and batches whatever the input size:

    parse   blob stream -> blocks of whole lines -> pyarrow (parser threads) -> batches of ``job_batch_rows``
            (Parquet: a scratch copy read row group by row group, ``tables.py``)
    infer   the pinned version's servable, one large batch per call (inference thread)
    write   encode (pyarrow kernels) -> streaming multipart upload to ``jobs/<id>/attempt-<n>/results.<ext>``

A heartbeat writes progress and renews the lease every ``job_progress_interval_seconds``; when the write
finds the attempt no longer holds the job (cancelled, or taken over after the lease ran out) the pipeline
stops at the next batch. The result is committed only if the attempt still holds the job, so only one attempt
can ever succeed; other attempts' result objects are deleted then (or, for attempts that died, swept through
the blob GC table, where every result key is recorded before it is written).

Errors: malformed input and data the model rejects fail the job at once (retrying cannot help); anything else
(a store down, a bug) hands the job back for another attempt, up to ``job_max_attempts``.
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
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tt_server import metrics
from tt_server.config import Settings
from tt_server.errors import DeadlineExceeded, NotFound, TensorTriggerError, Unavailable
from tt_server.jobs.columns import BOM, first_record, plan_columns
from tt_server.jobs.csvreader import BlockParser, JobInputError, ParsedBlock, split_blocks
from tt_server.jobs.notify import JobNotifier
from tt_server.jobs.objects import is_uri
from tt_server.jobs.results import ParquetResultWriter, ResultEncoder, make_encoder
from tt_server.jobs.tables import JsonLinesParser, TableBatch, TablePlan, convert_batch, jsonl_schema, plan_table
from tt_server.runtime.manager import ModelManager
from tt_server.runtime.servable import Servable
from tt_server.storage.blobs import BlobStore
from tt_server.storage.broker import Delivery
from tt_server.storage.jobs import MAX_ROW_ERRORS, JobProgress, JobStore
from tt_server.types import InputFormat, Job, JobState, ModelRef, RowError

log = logging.getLogger(__name__)

RESULT_GC_DELAY_US = 24 * 3600 * 1_000_000  # an attempt's result nobody committed is swept after a day
FIRST_LINE_READ_BYTES = 64 * 1024
RATE_WINDOW_SECONDS = 10.0  # progress reports a rate over about this long: steady, yet quick to follow changes


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


class _Stop(Exception):
    """Raised inside the pipeline when the attempt must stop between batches."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "stopping" (shutdown) or "lost" (cancelled or taken over)


def worker_id() -> str:
    """Identifies a worker in ``lease_owner``: host, process and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _Attempt:
    """A running attempt's counters, shared by the pipeline and the heartbeat."""

    job_id: str
    number: int
    rows_done: int = 0
    rows_read: int = 0
    rows_skipped: int = 0
    rows_total: int = 0  # known before the end for Parquet (its metadata)
    input_size: int = 0
    bytes_parsed: int = 0  # of the input, by the line parsers: scales rows read to an estimated total
    row_errors: list[RowError] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    lost: bool = False
    started: float = field(default_factory=time.monotonic)
    # (time, rows done) at each progress report in the last RATE_WINDOW_SECONDS: the recent rate
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def progress(self, final: bool = False) -> JobProgress:
        now = time.monotonic()
        total = self.rows_read if final else self.rows_total
        estimate = 0
        if not total and self.bytes_parsed and self.input_size:
            estimate = max(round(self.rows_read * self.input_size / self.bytes_parsed), self.rows_read)
        rate = self._rate(now, final)
        remaining = (total or estimate) - self.rows_done - self.rows_skipped
        return JobProgress(
            rows_done=self.rows_done,
            rows_skipped=self.rows_skipped,
            row_errors=tuple(self.row_errors),
            rows_total=total,
            timings={k: round(v, 4) for k, v in self.timings.items()},
            rows_total_estimate=estimate,
            rows_per_second=rate,
            eta_seconds=remaining / rate if rate > 0 and remaining > 0 and not final else 0.0,
        )

    def _rate(self, now: float, final: bool) -> float:
        if final:
            return self.rows_done / max(now - self.started, 1e-3)
        self.samples.append((now, self.rows_done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_SECONDS:
            self.samples.popleft()
        then, rows = self.samples[0]
        return (self.rows_done - rows) / (now - then) if now - then > 0.2 else 0.0


@dataclass
class _Batch:
    rows: int
    first_row: int
    inputs: dict[str, np.ndarray]
    passthrough: list[pa.Array]


# A coroutine that puts the input's batches on the queue, then None (or the exception that stopped it).
_Producer = Callable[[asyncio.Queue[_Batch | BaseException | None]], Coroutine[Any, Any, None]]


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
        self._models = models
        self._settings = settings
        self.owner = owner or worker_id()
        self._notifier = notifier
        # Parsing and the model run on threads of their own, so the two overlap and the event loop never blocks.
        self._parse_threads = ThreadPoolExecutor(
            concurrency * max(1, settings.job_parse_threads), thread_name_prefix="tt-job-parse"
        )
        self._infer_threads = ThreadPoolExecutor(concurrency, thread_name_prefix="tt-job-inference")
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        self._parse_threads.shutdown(wait=False, cancel_futures=True)
        self._infer_threads.shutdown(wait=False, cancel_futures=True)

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
                        metrics.JOBS_FINISHED.labels(job.model_name, str(job.model_version), "FAILED").inc()
                        log.error("job failed: out of attempts; message dead-lettered", extra={"job": job_id})
                        self._notify(job_id)
                        await delivery.nack(requeue=False)
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
        attempt = _Attempt(job.id, number, input_size=job.input_size)
        context = {"job": job.id, "attempt": number, "model": job.model_name, "version": job.model_version}
        log.info("job attempt started", extra=context)
        labels = (job.model_name, str(job.model_version))
        metrics.JOB_ATTEMPTS.labels(*labels).inc()
        if job.state is JobState.RUNNING:  # leased while RUNNING: the attempt that held it let its lease run out
            metrics.JOB_LEASE_EXPIRIES.labels(*labels).inc()
        running = metrics.JOBS_RUNNING.labels(*labels)
        running.inc()
        try:
            return await self._attempt(job, number, attempt, context)
        finally:
            running.dec()

    async def _attempt(self, job: Job, number: int, attempt: _Attempt, context: dict[str, object]) -> Outcome:
        started = time.perf_counter()
        heartbeat = asyncio.create_task(self._heartbeat(attempt), name=f"tt-job-heartbeat-{job.id}")
        key = ""
        local = self._settings.scratch_dir / f"job-{job.id}-attempt-{number}.parquet"
        try:
            handle = await self._models.get(ModelRef(job.model_name, version=job.model_version))
            produce: _Producer
            fmt = job.spec.input_format
            if fmt is InputFormat.PARQUET:
                # A local copy: Parquet needs random access (footer first), and row groups are then read one
                # at a time from disk, so memory stays flat whatever the file size.
                await asyncio.to_thread(local.parent.mkdir, parents=True, exist_ok=True)  # a worker's own data dir
                await self._blobs.get_file(job.input_blob_key, local)
                parquet = await asyncio.to_thread(_open_parquet, local)
                attempt.rows_total = parquet.metadata.num_rows
                table_plan = plan_table(job.spec, handle.model_version, parquet.schema_arrow)
                passthrough, outputs = list(table_plan.passthrough), table_plan.outputs

                def produce(out: asyncio.Queue[_Batch | BaseException | None]) -> Coroutine[Any, Any, None]:
                    return self._read_parquet(job, parquet, attempt, table_plan, out)

            elif fmt is InputFormat.JSONL:
                first = await self._first_bytes(job)
                table_plan = plan_table(job.spec, handle.model_version, jsonl_schema(_first_line_of(first)))
                passthrough, outputs = list(table_plan.passthrough), table_plan.outputs
                lines = JsonLinesParser(table_plan, job.spec.skip_bad_rows)

                def produce(out: asyncio.Queue[_Batch | BaseException | None]) -> Coroutine[Any, Any, None]:
                    return self._parse(job, attempt, lines, False, out)

            else:
                plan = plan_columns(job.spec, handle.model_version, await self._first_line(job))
                passthrough, outputs = [name for _, name in plan.passthrough], plan.outputs
                blocks = BlockParser(plan, job.spec.skip_bad_rows)

                def produce(out: asyncio.Queue[_Batch | BaseException | None]) -> Coroutine[Any, Any, None]:
                    return self._parse(job, attempt, blocks, plan.has_header, out)

            encoder = make_encoder(job.spec.output_format, passthrough, outputs)
            key = f"{_attempts_prefix(job)}{number}/results.{encoder.extension}"
            if not is_uri(key):  # results in the caller's object storage are cleaned up by the committing attempt
                await self._store.add_blob_gc(key, time.time_ns() // 1000 + RESULT_GC_DELAY_US)
            info = await self._blobs.put_stream(key, self._pipeline(job, attempt, produce, handle.servable, encoder))
            attempt.add_time("total_seconds", time.perf_counter() - started)
            if not await self._store.commit_job(job.id, number, key, info.size, attempt.progress(final=True)):
                await self._discard(key)
                return await self._lost(job.id, context)
            self._notify(job.id)
            metrics.JOBS_FINISHED.labels(job.model_name, str(job.model_version), "SUCCEEDED").inc()
            await self._discard_other_attempts(job, key)
            log.info(
                "job succeeded", extra={**context, "rows": attempt.rows_done, "bytes": info.size, **attempt.timings}
            )
            return Outcome.SUCCEEDED
        except _Stop as stop:
            if stop.reason == "stopping":
                released = await self._store.release_job(job.id, number, "", charge=False)
                log.info("job released at shutdown", extra=context)
                return Outcome.RELEASED if released else await self._lost(job.id, context)
            return await self._lost(job.id, context)
        except JobInputError as e:
            if e.row and not any(err.row == e.row for err in attempt.row_errors):
                attempt.row_errors.append(RowError(e.row, e.reason))
            return await self._fail(job.id, number, str(e), attempt, context)
        except (Unavailable, DeadlineExceeded) as e:
            return await self._retry(job.id, number, e.message, context)
        except TensorTriggerError as e:  # NotFound (version deleted), FailedPrecondition, InvalidArgument
            return await self._fail(job.id, number, e.message, attempt, context)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("job attempt crashed", extra={**context, "error_id": error_id})
            return await self._retry(job.id, number, f"internal error in the worker (error id {error_id})", context)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            local.unlink(missing_ok=True)

    async def _first_bytes(self, job: Job) -> bytes:
        prefix = bytearray()
        chunks = self._blobs.get_stream(job.input_blob_key, chunk_size=FIRST_LINE_READ_BYTES)
        try:
            async for chunk in chunks:
                prefix += chunk
                if b"\n" in chunk or len(prefix) > FIRST_LINE_READ_BYTES * 16:
                    break
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]  # both stores return async generators
        return bytes(prefix)

    async def _first_line(self, job: Job) -> list[str]:
        prefix = await self._first_bytes(job)
        try:
            return first_record(prefix, len(prefix) >= job.input_size, job.spec.csv.delimiter)
        except TensorTriggerError as e:
            raise JobInputError(0, e.message) from None

    async def _pipeline(
        self,
        job: Job,
        attempt: _Attempt,
        produce: _Producer,
        servable: Servable,
        encoder: ResultEncoder | ParquetResultWriter,
    ) -> AsyncIterator[bytes]:
        """The result file's bytes, batch by batch (consumed by the blob store's streaming upload)."""
        loop = asyncio.get_running_loop()
        batches: asyncio.Queue[_Batch | BaseException | None] = asyncio.Queue(maxsize=2)
        rows_metric = metrics.JOB_ROWS.labels(job.model_name, str(job.model_version))
        parser = asyncio.create_task(produce(batches), name=f"tt-job-parse-{job.id}")
        wrote_header = False
        try:
            while True:
                self._check(attempt)
                waited = time.perf_counter()
                item = await batches.get()
                attempt.add_time("wait_for_input_seconds", time.perf_counter() - waited)
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                self._check(attempt)
                began = time.perf_counter()
                try:
                    outputs = await loop.run_in_executor(self._infer_threads, servable.run, item.inputs)
                except TensorTriggerError as e:
                    e.message = f"rows {item.first_row}-{item.first_row + item.rows - 1}: {e.message}"
                    raise
                attempt.add_time("inference_seconds", time.perf_counter() - began)
                began = time.perf_counter()
                text = await asyncio.to_thread(encoder.encode, item.passthrough, outputs, item.rows)
                if not wrote_header:
                    text = encoder.header(outputs) + text
                    wrote_header = True
                attempt.add_time("encode_seconds", time.perf_counter() - began)
                began = time.perf_counter()
                yield text  # the upload runs while the generator is suspended here
                attempt.add_time("upload_seconds", time.perf_counter() - began)
                attempt.rows_done += item.rows
                rows_metric.inc(item.rows)
            if not wrote_header:
                yield encoder.header(None)
            if tail := await asyncio.to_thread(encoder.finish):
                yield tail
        finally:
            parser.cancel()
            await asyncio.gather(parser, return_exceptions=True)

    async def _parse(
        self,
        job: Job,
        attempt: _Attempt,
        parser: BlockParser | JsonLinesParser,
        has_header: bool,
        out: asyncio.Queue[_Batch | BaseException | None],
    ) -> None:
        """Producer for line formats (CSV, JSON Lines): blocks from the blob store, parsed on the parser threads
        (``job_parse_threads`` blocks at once, taken back in order), merged into batches."""
        s = self._settings
        loop = asyncio.get_running_loop()
        in_flight: deque[tuple[asyncio.Future[tuple[ParsedBlock | TableBatch, float]], int]] = deque()
        pending: list[ParsedBlock | TableBatch] = []
        first_row = next_row = 1

        async def take() -> None:
            nonlocal first_row, next_row, pending
            future, size = in_flight.popleft()
            try:
                parsed, seconds = await future
            except JobInputError as e:  # numbered within its block: make it a row number of the file
                raise JobInputError(e.row + next_row - 1 if e.row else 0, e.reason) from None
            attempt.add_time("parse_seconds", seconds)
            if parsed.errors:
                attempt.rows_skipped += len(parsed.errors)
                room = max(MAX_ROW_ERRORS - len(attempt.row_errors), 0)
                attempt.row_errors += [RowError(e.row + next_row - 1, e.reason) for e in parsed.errors[:room]]
            next_row += parsed.rows_read
            attempt.rows_read = next_row - 1
            attempt.bytes_parsed += size
            if parsed.rows:
                pending.append(parsed)
            if sum(p.rows for p in pending) >= s.job_batch_rows:
                await out.put(_merge(pending, first_row))
                pending = []
                first_row = next_row

        try:
            stream = _timed(self._blobs.get_stream(job.input_blob_key, chunk_size=s.job_parse_block_bytes), attempt)
            # aclosing: the blob stream (an open file or HTTP response) is closed at once, also on errors.
            async with contextlib.aclosing(split_blocks(stream, s.job_parse_block_bytes, has_header)) as blocks:
                async for block in blocks:
                    # Each block is parsed on its own, numbered from 1; take() renumbers them in file order.
                    future = loop.run_in_executor(self._parse_threads, _parse_block, parser, block)
                    in_flight.append((future, len(block)))
                    if len(in_flight) >= max(1, s.job_parse_threads):
                        await take()
            while in_flight:
                await take()
            if pending:
                await out.put(_merge(pending, first_row))
            await out.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            await out.put(e)
        finally:
            for future, _ in in_flight:
                future.cancel()
            await asyncio.gather(*(future for future, _ in in_flight), return_exceptions=True)

    async def _read_parquet(
        self,
        job: Job,
        parquet: pq.ParquetFile,
        attempt: _Attempt,
        plan: TablePlan,
        out: asyncio.Queue[_Batch | BaseException | None],
    ) -> None:
        """Producer for Parquet: ``job_batch_rows`` rows at a time, row group by row group, converted on a
        parser thread."""
        loop = asyncio.get_running_loop()
        batches = parquet.iter_batches(batch_size=self._settings.job_batch_rows, columns=plan.columns)
        first_row = 1
        try:
            while True:
                began = time.perf_counter()
                converted = await loop.run_in_executor(
                    self._parse_threads, _next_table_batch, batches, plan, first_row, job.spec.skip_bad_rows
                )
                attempt.add_time("parse_seconds", time.perf_counter() - began)
                if converted is None:
                    break
                if converted.errors:
                    attempt.rows_skipped += len(converted.errors)
                    room = max(MAX_ROW_ERRORS - len(attempt.row_errors), 0)
                    attempt.row_errors += converted.errors[:room]
                if converted.rows:
                    await out.put(_Batch(converted.rows, first_row, converted.inputs, converted.passthrough))
                first_row += converted.rows_read
                attempt.rows_read = first_row - 1
            await out.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            await out.put(e)
        finally:
            parquet.close()

    def _check(self, attempt: _Attempt) -> None:
        if attempt.lost:
            raise _Stop("lost")
        if self._stopping.is_set():
            raise _Stop("stopping")

    async def _heartbeat(self, attempt: _Attempt) -> None:
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
            return Outcome.CANCELLED
        log.warning("job attempt stopped: another attempt holds the job", extra={**context, "state": job.state.value})
        return Outcome.LOST

    async def _fail(
        self, job_id: str, number: int, error: str, attempt: _Attempt, context: dict[str, object]
    ) -> Outcome:
        if await self._store.fail_job(job_id, number, error, attempt.progress()):
            metrics.JOBS_FINISHED.labels(str(context["model"]), str(context["version"]), "FAILED").inc()
            log.warning("job failed", extra={**context, "error": error})
            self._notify(job_id)
            return Outcome.FAILED
        return await self._lost(job_id, context)

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

    async def _discard(self, key: str) -> None:
        try:
            await self._blobs.delete(key)
            await self._store.remove_blob_gc(key)
        except Exception:
            log.warning("result cleanup deferred to the sweeper", extra={"blob_key": key}, exc_info=True)

    async def _discard_other_attempts(self, job: Job, kept: str) -> None:
        """Delete results that earlier attempts of the job wrote but never committed."""
        try:
            keys = await self._blobs.list_keys(_attempts_prefix(job))
        except Exception:
            log.warning("could not list old attempts' results", extra={"job": job.id}, exc_info=True)
            return
        for key in keys:
            if key != kept:
                await self._discard(key)


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise JobInputError(0, f"the input is not a readable Parquet file: {e}") from None


def _next_table_batch(
    batches: Iterator[pa.RecordBatch], plan: TablePlan, first_row: int, skip: bool
) -> TableBatch | None:
    try:
        batch = next(batches, None)
    except (pa.ArrowException, OSError) as e:
        raise JobInputError(0, f"the Parquet input cannot be read after row {first_row - 1}: {e}") from None
    return None if batch is None else convert_batch(plan, batch, first_row, skip)


def _first_line_of(prefix: bytes) -> bytes:
    data = prefix.removeprefix(BOM)
    end = data.find(b"\n")
    return data if end < 0 else data[:end]


def _parse_block(parser: BlockParser | JsonLinesParser, block: bytes) -> tuple[ParsedBlock | TableBatch, float]:
    """Parse on a parser thread, timing the parse alone (blocks are parsed concurrently)."""
    began = time.perf_counter()
    parsed = parser.parse(block, first_row=1)
    return parsed, time.perf_counter() - began


def _merge(blocks: list[ParsedBlock | TableBatch], first_row: int) -> _Batch:
    if len(blocks) == 1:
        b = blocks[0]
        return _Batch(b.rows, first_row, b.inputs, b.passthrough)
    names = list(blocks[0].inputs)
    return _Batch(
        rows=sum(b.rows for b in blocks),
        first_row=first_row,
        inputs={name: np.concatenate([b.inputs[name] for b in blocks]) for name in names},
        passthrough=[pa.concat_arrays([b.passthrough[i] for b in blocks]) for i in range(len(blocks[0].passthrough))],
    )


async def _timed(chunks: AsyncIterator[bytes], attempt: _Attempt) -> AsyncIterator[bytes]:
    """Pass ``chunks`` through, adding the time spent waiting for each to ``read_seconds``."""
    try:
        while True:
            began = time.perf_counter()
            chunk = await anext(chunks, None)
            attempt.add_time("read_seconds", time.perf_counter() - began)
            if chunk is None:
                return
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def _attempts_prefix(job: Job) -> str:
    """Where the job's attempts write their results: ``<prefix>attempt-<n>/results.<ext>``."""
    return f"{job.spec.output_uri}{job.id}/attempt-" if job.spec.output_uri else f"jobs/{job.id}/attempt-"


def _give_up_message(job: Job) -> str:
    why = (
        f"last error: {job.error}"
        if job.error
        else "each attempt ended without a result (the worker crashed or was killed)"
    )
    return f"gave up after {job.attempts} attempts; {why}"
