"""One attempt at a job: the parse -> infer -> write pipeline, and how it ended (``AttemptEnd``).

``AttemptPipeline.run`` knows nothing of messages, leases or job states: it reads the input, runs the model and
writes the result object, then reports one ``AttemptEnd``. The delivery side (``runner.py``) owns the job's
state machine and turns the ending into a store transition (commit, fail, hand back) and an ack or nack.

Three stages with bounded queues between them, so memory stays a few blocks and batches whatever the input size:

    parse   CSV / JSON Lines: blob stream -> blocks of whole lines -> pyarrow (parser threads) -> batches of
            ``job_batch_rows``; Parquet: ranged reads of the needed column chunks, row group by row group
            (``inputs.RangedFile``), converted on a parser thread
    infer   the pinned version's servable, one large batch per call (inference thread)
    write   encode (pyarrow kernels) -> streaming multipart upload to ``<prefix>attempt-<n>/results.<ext>``

Between batches the pipeline stops if the attempt lost the job (the delivery's heartbeat found it cancelled or
taken over) or the worker is shutting down. Every result key is recorded in the blob GC table before it is
written, in the blob store and in a caller's bucket alike, so the object (or unfinished upload) of an attempt
that dies is swept later.

Endings: malformed input and data the model rejects are ``FAILED`` (retrying cannot help); a store down or a bug
is ``RETRY``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tt_server import metrics
from tt_server.config import Settings
from tt_server.errors import DeadlineExceeded, TensorTriggerError, Unavailable
from tt_server.jobs.columns import BOM, first_record, plan_columns
from tt_server.jobs.csvreader import BlockParser, JobInputError, ParsedBlock, split_blocks
from tt_server.jobs.inputs import RangedFile, read_first_line
from tt_server.jobs.results import ParquetResultWriter, ResultEncoder, make_encoder
from tt_server.jobs.tables import JsonLinesParser, TableBatch, TablePlan, convert_batch, jsonl_schema, plan_table
from tt_server.runtime.manager import ModelManager
from tt_server.runtime.servable import Servable
from tt_server.storage.blobs import BlobInfo, BlobStore
from tt_server.storage.jobs import MAX_ROW_ERRORS, JobProgress
from tt_server.storage.outbox import BlobOutbox
from tt_server.types import InputFormat, Job, ModelRef, ModelVersion, RowError, TensorSpec

log = logging.getLogger(__name__)

RESULT_GC_DELAY_US = 24 * 3600 * 1_000_000  # an attempt's result nobody committed is swept after a day
RATE_WINDOW_SECONDS = 10.0  # progress reports a rate over about this long: steady, yet quick to follow changes


class Ending(enum.Enum):
    """How an attempt's pipeline ended."""

    WRITTEN = "written"  # the result object is stored (``AttemptEnd.result``), not yet committed
    STOPPING = "stopping"  # the worker is shutting down: hand the job back uncharged
    LOST = "lost"  # the attempt no longer holds the job (cancelled, or taken over)
    FAILED = "failed"  # cannot pass on retry: malformed input, data the model rejects, version gone
    RETRY = "retry"  # may pass on another attempt: a store down, a bug


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    ending: Ending
    error: str = ""
    result: BlobInfo | None = None


@dataclass
class Attempt:
    """A running attempt's counters, shared by the pipeline and the delivery's heartbeat."""

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
    lost: bool = False  # set by the heartbeat: the pipeline stops at the next batch
    started: float = field(default_factory=time.monotonic)
    # (time, rows done) at each progress report in the last RATE_WINDOW_SECONDS: the recent rate
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def add_row_errors(self, errors: list[RowError]) -> None:
        self.rows_skipped += len(errors)
        room = max(MAX_ROW_ERRORS - len(self.row_errors), 0)
        self.row_errors += errors[:room]

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


class _Stop(Exception):
    """Raised inside the pipeline when the attempt must stop between batches."""

    def __init__(self, ending: Ending) -> None:
        super().__init__(ending.value)
        self.ending = ending


@dataclass
class _Batch:
    rows: int
    first_row: int
    inputs: dict[str, np.ndarray]
    passthrough: list[pa.Array]


_Queue = asyncio.Queue[_Batch | BaseException | None]
# A coroutine that puts the input's batches on the queue, then None (or the exception that stopped it).
_Producer = Callable[[_Queue], Coroutine[Any, Any, None]]


class AttemptPipeline:
    """Runs attempts (``run``); safe for concurrent attempts. ``stopping`` set: running attempts end
    ``STOPPING`` at their next batch. ``close()`` frees the threads."""

    def __init__(
        self,
        results: BlobOutbox,
        blobs: BlobStore,
        models: ModelManager,
        settings: Settings,
        stopping: asyncio.Event,
        concurrency: int = 1,
    ) -> None:
        self._results = results
        self._blobs = blobs
        self._models = models
        self._settings = settings
        self._stopping = stopping
        # Parsing and the model run on threads of their own, so the two overlap and the event loop never blocks.
        self._parse_threads = ThreadPoolExecutor(
            concurrency * max(1, settings.job_parse_threads), thread_name_prefix="tt-job-parse"
        )
        self._infer_threads = ThreadPoolExecutor(concurrency, thread_name_prefix="tt-job-inference")

    def close(self) -> None:
        self._parse_threads.shutdown(wait=False, cancel_futures=True)
        self._infer_threads.shutdown(wait=False, cancel_futures=True)

    async def run(self, job: Job, attempt: Attempt, context: dict[str, object]) -> AttemptEnd:
        """Read, infer and write the attempt's result object; how that ended (never raises but for
        cancellation)."""
        started = time.perf_counter()
        try:
            handle = await self._models.get(ModelRef(job.model_name, version=job.model_version))
            produce, passthrough, outputs = await self._plan(job, attempt, handle.model_version)
            encoder = make_encoder(job.spec.output_format, passthrough, outputs)
            key = f"{attempts_prefix(job)}{attempt.number}/results.{encoder.extension}"
            # Also in a caller's bucket: if this worker is killed, the GC entry is what lets the sweeper delete the
            # object or abort the unfinished upload there (JobBlobs.delete), and touch nothing else of theirs.
            await self._results.reserve(key)  # claimed by commit_job, or discarded by the delivery
            info = await self._blobs.put_stream(key, self._pipeline(job, attempt, produce, handle.servable, encoder))
            attempt.add_time("total_seconds", time.perf_counter() - started)
            return AttemptEnd(Ending.WRITTEN, result=info)
        except _Stop as stop:
            return AttemptEnd(stop.ending)
        except JobInputError as e:
            if e.row and not any(err.row == e.row for err in attempt.row_errors):
                attempt.row_errors.append(RowError(e.row, e.reason))
            return AttemptEnd(Ending.FAILED, str(e))
        except (Unavailable, DeadlineExceeded) as e:
            return AttemptEnd(Ending.RETRY, e.message)
        except TensorTriggerError as e:  # NotFound (version deleted), FailedPrecondition, InvalidArgument
            return AttemptEnd(Ending.FAILED, e.message)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("job attempt crashed", extra={**context, "error_id": error_id})
            return AttemptEnd(Ending.RETRY, f"internal error in the worker (error id {error_id})")

    async def _plan(
        self, job: Job, attempt: Attempt, version: ModelVersion
    ) -> tuple[_Producer, list[str], list[TensorSpec]]:
        """The producer of the input's batches, the pass-through column names and the outputs."""
        fmt = job.spec.input_format
        if fmt is InputFormat.PARQUET:
            loop = asyncio.get_running_loop()
            source = RangedFile(self._blobs, job.input_blob_key, job.input_size, loop)
            parquet = await asyncio.to_thread(_open_parquet, source)
            attempt.rows_total = parquet.metadata.num_rows
            table_plan = plan_table(job.spec, version, parquet.schema_arrow)

            def read_parquet(out: _Queue) -> Coroutine[Any, Any, None]:
                return self._read_parquet(job, parquet, source, attempt, table_plan, out)

            return read_parquet, list(table_plan.passthrough), list(table_plan.outputs)
        first = await self._first_line(job)
        if fmt is InputFormat.JSONL:
            table_plan = plan_table(job.spec, version, jsonl_schema(first.removeprefix(BOM).split(b"\n", 1)[0]))
            lines = JsonLinesParser(table_plan, job.spec.skip_bad_rows)

            def parse_lines(out: _Queue) -> Coroutine[Any, Any, None]:
                return self._parse(job, attempt, lines, False, out)

            return parse_lines, list(table_plan.passthrough), list(table_plan.outputs)
        try:
            record = first_record(first, len(first) >= job.input_size, job.spec.csv.delimiter)
        except TensorTriggerError as e:
            raise JobInputError(0, e.message) from None
        plan = plan_columns(job.spec, version, record)
        blocks = BlockParser(plan, job.spec.skip_bad_rows)

        def parse_csv(out: _Queue) -> Coroutine[Any, Any, None]:
            return self._parse(job, attempt, blocks, plan.has_header, out)

        return parse_csv, [name for _, name in plan.passthrough], list(plan.outputs)

    async def _first_line(self, job: Job) -> bytes:
        return await read_first_line(self._blobs, job.input_blob_key)

    async def _pipeline(
        self,
        job: Job,
        attempt: Attempt,
        produce: _Producer,
        servable: Servable,
        encoder: ResultEncoder | ParquetResultWriter,
    ) -> AsyncIterator[bytes]:
        """The result file's bytes, batch by batch (consumed by the blob store's streaming upload)."""
        loop = asyncio.get_running_loop()
        batches: _Queue = asyncio.Queue(maxsize=2)
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
        attempt: Attempt,
        parser: BlockParser | JsonLinesParser,
        has_header: bool,
        out: _Queue,
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
                attempt.add_row_errors([RowError(e.row + next_row - 1, e.reason) for e in parsed.errors])
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
        source: RangedFile,
        attempt: Attempt,
        plan: TablePlan,
        out: _Queue,
    ) -> None:
        """Producer for Parquet: ``job_batch_rows`` rows at a time, row group by row group, read (ranged reads
        of the needed column chunks) and converted on a parser thread."""
        loop = asyncio.get_running_loop()
        batches = _row_group_batches(parquet, source, self._settings.job_batch_rows, plan.columns)
        first_row = 1
        try:
            while True:
                began, read_before = time.perf_counter(), source.seconds
                converted = await loop.run_in_executor(
                    self._parse_threads, _next_table_batch, batches, plan, first_row, job.spec.skip_bad_rows
                )
                reading = source.seconds - read_before
                attempt.add_time("read_seconds", reading)
                attempt.add_time("parse_seconds", time.perf_counter() - began - reading)
                if converted is None:
                    break
                if converted.errors:
                    attempt.add_row_errors(converted.errors)
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

    def _check(self, attempt: Attempt) -> None:
        if attempt.lost:
            raise _Stop(Ending.LOST)
        if self._stopping.is_set():
            raise _Stop(Ending.STOPPING)


def attempts_prefix(job: Job) -> str:
    """Where the job's attempts write their results: ``<prefix>attempt-<n>/results.<ext>``."""
    return f"{job.spec.output_uri}{job.id}/attempt-" if job.spec.output_uri else f"jobs/{job.id}/attempt-"


def _open_parquet(source: RangedFile) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as e:
        raise JobInputError(0, f"the input is not a readable Parquet file: {e}") from None


def _row_group_batches(
    parquet: pq.ParquetFile, source: RangedFile, batch_rows: int, columns: list[str]
) -> Iterator[pa.RecordBatch]:
    """Batches of at most ``batch_rows``, one row group after another, the next group's column chunks read
    ahead while this one is converted and run. One ``iter_batches`` per row group keeps memory flat: one over
    the whole file grew the worker's RSS by ~75 MiB per ten 100k-row groups (measured on a 3M-row file, with the
    mimalloc, jemalloc and system pools alike); per row group it stayed level."""
    metadata = parquet.metadata
    wanted = set(columns)
    for group in range(metadata.num_row_groups):
        batches = parquet.iter_batches(batch_size=batch_rows, columns=columns, row_groups=[group])
        first = next(batches, None)  # this group's chunks are read now: the next group's may start
        if group + 1 < metadata.num_row_groups:
            source.prefetch(_column_chunk_ranges(metadata.row_group(group + 1), wanted))
        if first is not None:
            yield first
        yield from batches


def _column_chunk_ranges(row_group: pq.RowGroupMetaData, columns: set[str]) -> list[tuple[int, int]]:
    """(offset, length) of the row group's chunks of ``columns``, as pyarrow reads them: from the dictionary
    page if there is one, ``total_compressed_size`` long. A range pyarrow reads differently is just not used."""
    ranges = []
    for i in range(row_group.num_columns):
        chunk = row_group.column(i)
        if chunk.path_in_schema.split(".", 1)[0] not in columns:
            continue
        start = chunk.data_page_offset
        if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
            start = chunk.dictionary_page_offset
        ranges.append((start, chunk.total_compressed_size))
    return ranges


def _next_table_batch(
    batches: Iterator[pa.RecordBatch], plan: TablePlan, first_row: int, skip: bool
) -> TableBatch | None:
    try:
        batch = next(batches, None)
    except (pa.ArrowException, OSError) as e:
        raise JobInputError(0, f"the Parquet input cannot be read after row {first_row - 1}: {e}") from None
    return None if batch is None else convert_batch(plan, batch, first_row, skip)


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


async def _timed(chunks: AsyncIterator[bytes], attempt: Attempt) -> AsyncIterator[bytes]:
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
