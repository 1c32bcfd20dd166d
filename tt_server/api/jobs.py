"""JobsService: converts protobuf <-> domain and delegates to ``tt_server.jobs.service.JobsService``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from tensortrigger.v1 import jobs_service_pb2 as pb
from tensortrigger.v1 import jobs_service_pb2_grpc

from tt_server.api import convert
from tt_server.errors import InvalidArgument, request_fields
from tt_server.jobs.objects import is_uri
from tt_server.jobs.service import JobsService
from tt_server.types import CsvOptions, InputFormat, Job, JobSpec, JobState, ModelRef, OutputFormat

STATE_TO_PB: dict[JobState, int] = {
    JobState.QUEUED: pb.JOB_STATE_QUEUED,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}
STATE_FROM_PB: dict[int, JobState] = {v: k for k, v in STATE_TO_PB.items()}
OUTPUT_FROM_PB: dict[int, OutputFormat] = {
    pb.OUTPUT_FORMAT_UNSPECIFIED: OutputFormat.CSV,
    pb.OUTPUT_FORMAT_CSV: OutputFormat.CSV,
    pb.OUTPUT_FORMAT_JSONL: OutputFormat.JSONL,
    pb.OUTPUT_FORMAT_PARQUET: OutputFormat.PARQUET,
}
OUTPUT_TO_PB: dict[OutputFormat, int] = {
    OutputFormat.CSV: pb.OUTPUT_FORMAT_CSV,
    OutputFormat.JSONL: pb.OUTPUT_FORMAT_JSONL,
    OutputFormat.PARQUET: pb.OUTPUT_FORMAT_PARQUET,
}
INPUT_FROM_PB: dict[int, InputFormat] = {
    pb.INPUT_FORMAT_UNSPECIFIED: InputFormat.CSV,
    pb.INPUT_FORMAT_CSV: InputFormat.CSV,
    pb.INPUT_FORMAT_PARQUET: InputFormat.PARQUET,
    pb.INPUT_FORMAT_JSONL: InputFormat.JSONL,
}
INPUT_TO_PB: dict[InputFormat, int] = {
    InputFormat.CSV: pb.INPUT_FORMAT_CSV,
    InputFormat.PARQUET: pb.INPUT_FORMAT_PARQUET,
    InputFormat.JSONL: pb.INPUT_FORMAT_JSONL,
}


class JobsServicer(jobs_service_pb2_grpc.JobsServiceServicer):
    def __init__(self, jobs: JobsService) -> None:
        self._jobs = jobs

    async def CreateJob(
        self, request_iterator: AsyncIterator[pb.CreateJobRequest], context: grpc.aio.ServicerContext
    ) -> pb.CreateJobResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "spec":
            raise InvalidArgument.field("spec", "the first message of CreateJob must carry the spec")
        spec = job_spec(first.spec)

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if message.WhichOneof("payload") != "chunk":
                    raise InvalidArgument.field("spec", "only the first message may carry the spec")
                yield message.chunk

        with request_fields({"ref": "spec.model", "input": "chunk"}):  # the domain's spec.* are the wire's
            job = await self._jobs.create(spec, chunks())
        return pb.CreateJobResponse(job=job_to_pb(job))

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=job_to_pb(await self._jobs.get(request.id)))

    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        state = None
        if request.state:
            if request.state not in STATE_FROM_PB:
                raise InvalidArgument.field("state", f"unknown job state {request.state}")
            state = STATE_FROM_PB[request.state]
        page = await self._jobs.list_jobs(request.model_name, state, request.page_size, request.page_token)
        return pb.ListJobsResponse(jobs=[job_to_pb(j) for j in page.items], next_page_token=page.next_page_token)

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchJobResponse]:
        async for job in self._jobs.watch(request.id):
            yield pb.WatchJobResponse(job=job_to_pb(job))

    async def CancelJob(self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext) -> pb.CancelJobResponse:
        return pb.CancelJobResponse(job=job_to_pb(await self._jobs.cancel(request.id)))

    async def GetJobResults(
        self, request: pb.GetJobResultsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GetJobResultsResponse]:
        total, chunks = await self._jobs.results(request.id, request.offset)
        offset = request.offset
        async for chunk in chunks:
            yield pb.GetJobResultsResponse(chunk=chunk, offset=offset, total_size_bytes=total)
            offset += len(chunk)
        if offset == request.offset:  # nothing left to send: still tell the caller the size
            yield pb.GetJobResultsResponse(offset=offset, total_size_bytes=total)


def job_spec(spec: pb.JobSpec) -> JobSpec:
    if spec.input_format not in INPUT_FROM_PB:
        raise InvalidArgument.field("spec.input_format", f"unknown input format {spec.input_format}")
    if spec.output_format not in OUTPUT_FROM_PB:
        raise InvalidArgument.field("spec.output_format", f"unknown output format {spec.output_format}")
    csv = spec.csv
    return JobSpec(
        model=convert.model_ref(spec.model, "spec.model"),
        csv=CsvOptions(
            has_header=csv.has_header,
            delimiter=csv.delimiter or ",",
            feature_columns=tuple(csv.feature_columns),
            feature_column_indices=tuple(csv.feature_column_indices),
            passthrough_columns=tuple(csv.passthrough_columns),
        ),
        output_format=OUTPUT_FROM_PB[spec.output_format],
        skip_bad_rows=spec.skip_bad_rows,
        input_blob_key=spec.input_blob_key,
        annotations=dict(spec.annotations),
        input_uri=spec.input_uri,
        output_uri=spec.output_uri,
        input_format=INPUT_FROM_PB[spec.input_format],
    )


def job_spec_to_pb(spec: JobSpec) -> pb.JobSpec:
    return pb.JobSpec(
        model=convert.model_ref_to_pb(spec.model),
        input_format=INPUT_TO_PB[spec.input_format],  # type: ignore[arg-type]
        csv=pb.CsvOptions(
            has_header=spec.csv.has_header,
            delimiter=spec.csv.delimiter,
            feature_columns=spec.csv.feature_columns,
            feature_column_indices=spec.csv.feature_column_indices,
            passthrough_columns=spec.csv.passthrough_columns,
        ),
        output_format=OUTPUT_TO_PB[spec.output_format],  # type: ignore[arg-type]
        skip_bad_rows=spec.skip_bad_rows,
        input_blob_key=spec.input_blob_key,
        annotations=spec.annotations,
        input_uri=spec.input_uri,
        output_uri=spec.output_uri,
    )


def job_to_pb(job: Job) -> pb.Job:
    message = pb.Job(
        id=job.id,
        model=convert.model_ref_to_pb(ModelRef(job.model_name, version=job.model_version)),
        spec=job_spec_to_pb(job.spec),
        state=STATE_TO_PB[job.state],  # type: ignore[arg-type]
        rows_done=job.rows_done,
        rows_total=job.rows_total,
        rows_skipped=job.rows_skipped,
        row_errors=[pb.RowError(row=e.row, reason=e.reason) for e in job.row_errors],
        attempts=job.attempts,
        error=job.error,
        input_size_bytes=job.input_size,
        result_size_bytes=job.result_size,
        create_time=convert.timestamp(job.created_at),
        result_uri=job.result_blob_key if job.result_blob_key and is_uri(job.result_blob_key) else "",
        rows_total_estimate=job.rows_total_estimate if job.state is JobState.RUNNING and not job.rows_total else 0,
        rows_per_second=job.rows_per_second,
        eta_seconds=job.eta_seconds if job.state is JobState.RUNNING else 0.0,
    )
    if job.started_at is not None:
        message.start_time.CopyFrom(convert.timestamp(job.started_at))
    if job.ended_at is not None:
        message.end_time.CopyFrom(convert.timestamp(job.ended_at))
    return message
