"""JobsService: batch jobs in domain terms (create, read, watch, cancel, results). Knows nothing of gRPC.

Create path: resolve and pin the model version (``Registry.select_version``) and check the spec against it -> stream
the input into the blob store under ``jobs/<id>/input.csv`` (size cap enforced as bytes arrive; the key is first
recorded in the blob GC table, so an interrupted upload leaves nothing behind for long) (or take the object
``spec.input_uri`` names in the caller's object storage, if under the allowed prefixes: ``objects.py``) -> check
the columns against the file's first line (CSV, JSON Lines) or schema (Parquet footer) -> insert the QUEUED row
(claiming the input blob in the same transaction) -> publish the job id (confirmed by the broker). If publishing
fails the job is marked FAILED and the caller gets UNAVAILABLE: no job is ever QUEUED without a message, except
after a crash between insert and publish, which the workers' sweeper repairs (``job_requeue_after_seconds``).

The work itself happens in ``runner.py``, in tt-worker processes or the embedded worker.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

from tt_server.config import Settings
from tt_server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from tt_server.jobs.columns import BOM, MAX_FIRST_LINE_BYTES, check_spec, first_record, plan_columns
from tt_server.jobs.inputs import read_first_line
from tt_server.jobs.notify import JobNotifier
from tt_server.jobs.objects import check_uri, is_uri, normalise_prefix
from tt_server.jobs.tables import (
    FOOTER_READ_BYTES,
    jsonl_schema,
    parquet_footer_length,
    parquet_metadata,
    plan_table,
)
from tt_server.logs import served_model
from tt_server.registry.names import check_model_name
from tt_server.registry.service import Registry
from tt_server.storage.blobs import BlobStore
from tt_server.storage.broker import Broker
from tt_server.storage.jobs import JobStore
from tt_server.storage.outbox import BlobOutbox
from tt_server.types import InputFormat, Job, JobSpec, JobState, ModelVersion, Page

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
RESULT_CHUNK_BYTES = 1 << 20  # per GetJobResults message: well under the gRPC message limit
UPLOAD_GC_DELAY_US = 3600 * 1_000_000  # an input whose job was never stored is swept after an hour
MAX_ANNOTATION_BYTES = 16 * 1024
EXTERNAL_INPUT_PREFIX = "inputs/"  # where operators drop files for jobs (spec.input_blob_key)
_JOB_INPUT_KEY = re.compile(r"jobs/[0-9a-f]{32}/input\.csv")


def check_job_id(job_id: str, field: str = "id") -> None:
    if not JOB_ID.match(job_id):
        raise InvalidArgument.field(field, f"{job_id[:80]!r} is not a job id (32 lowercase hex digits)")


def input_key(job_id: str) -> str:
    return f"jobs/{job_id}/input.csv"


class JobsService:
    def __init__(
        self,
        store: JobStore,
        blobs: BlobStore,
        broker: Broker,
        registry: Registry,
        settings: Settings,
        notifier: JobNotifier | None = None,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._broker = broker
        self._registry = registry
        self._settings = settings
        self.notifier = notifier or JobNotifier()
        # A streamed input is reserved in the blob GC table before its first byte, claimed by create_job.
        self._inputs = BlobOutbox(blobs, store, delay_us=UPLOAD_GC_DELAY_US, what="job input")
        for prefix in settings.job_s3_allowed_prefixes:
            normalise_prefix(prefix)  # a misconfigured prefix stops the server at start-up

    # --- create ---------------------------------------------------------------------------------------------
    async def create(self, spec: JobSpec, chunks: AsyncIterator[bytes]) -> Job:
        """Store the input, pin the model version, queue the job. ``chunks`` is the input file, or nothing when
        ``spec.input_blob_key`` names an object already in the blob store. Violations name ``spec.*`` (``ref`` for
        its model) and ``input`` (the file's bytes); each transport moves them onto its request's fields."""
        annotations = sum(len(k) + len(v) for k, v in spec.annotations.items())
        if annotations > MAX_ANNOTATION_BYTES:
            raise InvalidArgument.field("spec.annotations", f"over {MAX_ANNOTATION_BYTES} bytes")
        version = await self._registry.select_version(spec.model)  # names model and pinned version for the access log
        check_spec(spec, version)
        job_id = uuid.uuid4().hex
        if spec.input_uri and spec.input_blob_key:
            raise InvalidArgument.field("spec.input_uri", "give input_uri or input_blob_key, not both")
        if spec.output_uri:
            allowed = self._settings.job_s3_allowed_prefixes
            spec = replace(spec, output_uri=check_uri(spec.output_uri, allowed, "spec.output_uri", folder=True))
        if spec.input_uri:
            uri = check_uri(spec.input_uri, self._settings.job_s3_allowed_prefixes, "spec.input_uri")
            spec = replace(spec, input_uri=uri)
            size, prefix = await self._existing_input(uri, chunks, "spec.input_uri")
            job = await self._store_job(job_id, spec, version, uri, size, prefix, owns_input=False)
        elif spec.input_blob_key:
            size, prefix = await self._existing_input(spec.input_blob_key, chunks, "spec.input_blob_key")
            job = await self._store_job(job_id, spec, version, spec.input_blob_key, size, prefix, owns_input=False)
        else:
            key = input_key(job_id)
            # Any failure before the row is stored discards the upload (also an outage: nothing waits on it).
            async with self._inputs.stage(key, keep_when_unavailable=False) as staged:
                size, prefix = await self._upload(key, chunks)
                job = await self._store_job(job_id, spec, version, key, size, prefix, owns_input=True)
                staged.claimed()  # create_job removed the GC entry in its transaction
        try:
            await self._broker.publish(job_id)
        except Exception as e:
            await self._store.abandon_job(job_id, "the job could not be queued: the job queue was unavailable")
            self.notifier.notify(job_id)
            if isinstance(e, Unavailable):
                raise
            raise Unavailable("the job queue is unavailable") from e
        log.info(
            "job created",
            extra={"job": job_id, "model": job.model_name, "version": job.model_version, "input_bytes": size},
        )
        return job

    async def _store_job(
        self,
        job_id: str,
        spec: JobSpec,
        version: ModelVersion,
        key: str,
        size: int,
        prefix: bytes,
        owns_input: bool,
    ) -> Job:
        """Check the columns against the input, then insert the QUEUED row."""
        await self._check_columns(spec, version, key, size, prefix)
        draft = Job(
            id=job_id,
            model_name=version.model_name,
            model_version=version.version,
            spec=spec,
            state=JobState.QUEUED,
            input_blob_key=key,
            input_size=size,
            created_at=datetime.now(UTC),
        )
        return await self._store.create_job(draft, owns_input=owns_input)

    async def _upload(self, key: str, chunks: AsyncIterator[bytes]) -> tuple[int, bytes]:
        """Stream the input to ``key`` under the size cap; returns its size and its first bytes (the header)."""
        cap = self._settings.job_max_input_bytes
        prefix = bytearray()
        size = 0

        async def capped() -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in chunks:
                size += len(chunk)
                if size > cap:
                    raise ResourceExhausted(f"the job input is over the limit of {cap} bytes")
                if len(prefix) <= MAX_FIRST_LINE_BYTES:
                    prefix.extend(chunk[: MAX_FIRST_LINE_BYTES + 1 - len(prefix)])
                yield chunk

        info = await self._blobs.put_stream(key, capped())
        if info.size == 0:
            raise InvalidArgument.field("input", "the job input is empty: send the file's bytes")
        return info.size, bytes(prefix)

    async def _existing_input(self, key: str, chunks: AsyncIterator[bytes], field: str) -> tuple[int, bytes]:
        if await anext(aiter(chunks), None) is not None:
            raise InvalidArgument.field(field, "give the input either as chunks or as a stored object, not both")
        # Only dedicated input objects: never model artifacts or other jobs' results.
        if not (is_uri(key) or key.startswith(EXTERNAL_INPUT_PREFIX) or _JOB_INPUT_KEY.fullmatch(key)):
            raise InvalidArgument.field(
                field, f"job inputs must be under {EXTERNAL_INPUT_PREFIX!r} or be an earlier job's input"
            )
        try:
            size = await self._blobs.size(key)
            prefix = await read_first_line(self._blobs, key)
        except NotFound:
            if is_uri(key):
                raise NotFound(f"{field}: no object {key!r}") from None
            raise InvalidArgument.field(field, f"no object {key!r} in the blob store") from None
        except PermissionDenied:
            raise PermissionDenied(f"{field}: the server's credentials may not read {key!r}") from None
        except ValueError as e:  # a key the blob store refuses (e.g. "..")
            raise InvalidArgument.field(field, str(e)) from None
        if size == 0:
            raise InvalidArgument.field(field, f"the object {key!r} is empty")
        cap = self._settings.job_max_input_bytes
        if size > cap:
            raise ResourceExhausted(f"{field}: the object {key!r} is {size} bytes, over the limit of {cap} bytes")
        return size, prefix

    async def _check_columns(self, spec: JobSpec, version: ModelVersion, key: str, size: int, prefix: bytes) -> None:
        """The column plan must work for the input's first line (CSV, JSON Lines) or schema (Parquet)."""
        if spec.input_format is InputFormat.CSV:
            plan_columns(spec, version, first_record(prefix, size <= len(prefix), spec.csv.delimiter))
        elif spec.input_format is InputFormat.JSONL:
            line = prefix.removeprefix(BOM).split(b"\n", 1)[0]
            plan_table(spec, version, jsonl_schema(line))
        else:
            tail = await self._tail(key, size, FOOTER_READ_BYTES)
            length = parquet_footer_length(tail)
            if length > size - 4:
                raise InvalidArgument.field("spec.input_format", "the input is not a Parquet file (bad footer)")
            if length > len(tail):
                tail = await self._tail(key, size, length)
            metadata = parquet_metadata(tail[-length:])
            plan_table(spec, version, metadata.schema.to_arrow_schema())

    async def _tail(self, key: str, size: int, length: int) -> bytes:
        start = max(0, size - length)
        return await self._blobs.get_range(key, start, size - start)

    # --- reads ----------------------------------------------------------------------------------------------
    async def get(self, job_id: str) -> Job:
        check_job_id(job_id)
        return _concerning(await self._store.get_job(job_id))

    async def list_jobs(self, model_name: str, state: JobState | None, page_size: int, page_token: str) -> Page[Job]:
        if model_name:
            check_model_name(model_name, "model_name")
            served_model.set((model_name, None))
        return await self._store.list_jobs(model_name or None, state, page_size, page_token)

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        """The job now, then again after each change, ending after a terminal state."""
        check_job_id(job_id)
        seen: tuple[object, ...] | None = None
        while True:
            job = _concerning(await self._store.get_job(job_id))
            key = (job.state, job.rows_done, job.rows_skipped, job.rows_total, job.attempts, job.error)
            if key != seen:
                seen = key
                yield job
            if job.state.terminal:
                return
            await self.notifier.wait(job_id, self._settings.job_watch_poll_seconds)

    async def cancel(self, job_id: str) -> Job:
        """CANCELLED now; a running attempt notices at its next progress write and stops between chunks."""
        check_job_id(job_id)
        job = _concerning(await self._store.cancel_job(job_id))
        self.notifier.notify(job_id)
        log.info("job cancelled", extra={"job": job_id})
        return job

    async def results(self, job_id: str, offset: int) -> tuple[int, AsyncIterator[bytes]]:
        """The result file's size and its bytes from ``offset``."""
        check_job_id(job_id)
        job = _concerning(await self._store.get_job(job_id))
        if job.state is not JobState.SUCCEEDED or job.result_blob_key is None:
            raise FailedPrecondition(f"job {job_id!r} has no results: it is {job.state.value}")
        if not 0 <= offset <= job.result_size:
            raise InvalidArgument.field("offset", f"must be between 0 and the result size, {job.result_size}")
        return job.result_size, self._blobs.get_stream(job.result_blob_key, offset, RESULT_CHUNK_BYTES)


def _concerning(job: Job) -> Job:
    """``job``, its model and pinned version named for the access log (as inference names what it served)."""
    served_model.set((job.model_name, job.model_version))
    return job


def _now_us() -> int:
    return time.time_ns() // 1000
