"""JobsService end to end on both modes: embedded (in-process queue and worker) and production (PostgreSQL,
S3 on moto, RabbitMQ, a worker consuming over AMQP)."""

from __future__ import annotations

import asyncio
import collections
import json

import grpc
import numpy as np
import pytest
from tensortrigger.v1 import jobs_service_pb2 as pb
from tensortrigger.v1 import model_pb2

from tests.api.helpers import violations
from tests.jobs.conftest import JobServer
from tests.jobs.helpers import (
    JobEvents,
    create_job,
    csv_bytes,
    features,
    parse_results_csv,
    predict,
    results,
    spec,
    upload_model,
    wait_for,
)
from tests.serving import unique_name
from tt_server.jobs.runner import Outcome


async def test_csv_round_trip_matches_in_process_predictions(jobs, mlp, job_artifacts, job_server: JobServer) -> None:
    x = features(2345)
    job = await create_job(jobs, spec(mlp), csv_bytes(x), chunk=10_000)
    assert job.state == pb.JOB_STATE_QUEUED
    assert (job.model.name, job.model.version) == (mlp, 1)  # pinned
    done = await wait_for(jobs, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    assert (done.rows_done, done.rows_total, done.rows_skipped, done.attempts) == (2345, 2345, 0, 1)
    header, rows = parse_results_csv(await results(jobs, job.id))
    assert header == ["id", "note", "score"]
    assert [r[0] for r in rows] == [f"r{i}" for i in range(2345)]  # pass-through first, in input order
    assert [r[1] for r in rows] == [f"n{i % 7}" for i in range(2345)]
    got = np.array([float(r[2]) for r in rows], dtype=np.float32)
    np.testing.assert_allclose(got, predict(job_artifacts["mlp"], x)[:, 0], rtol=1e-6, atol=1e-7)
    assert done.result_size_bytes == len(await results(jobs, job.id))
    # Only the committed attempt's result remains in the blob store.
    keys = await job_server.app.blobs.list_keys(f"jobs/{job.id}/")
    assert keys == [f"jobs/{job.id}/attempt-1/results.csv", f"jobs/{job.id}/input.csv"]


async def test_jsonl_round_trip(jobs, mlp, job_artifacts) -> None:
    x = features(700, seed=1)
    job = await create_job(jobs, spec(mlp, output_format=pb.OUTPUT_FORMAT_JSONL), csv_bytes(x))
    done = await wait_for(jobs, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    lines = (await results(jobs, job.id)).decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert [list(r) for r in records[:1]] == [["id", "note", "score"]]
    assert [r["id"] for r in records] == [f"r{i}" for i in range(700)]
    got = np.array([r["score"] for r in records], dtype=np.float32)
    np.testing.assert_allclose(got, predict(job_artifacts["mlp"], x)[:, 0], rtol=1e-6, atol=1e-7)


async def test_columns_by_position_without_header(jobs, mlp, job_artifacts) -> None:
    x = features(50, seed=2)
    data = csv_bytes(x, ids=False, header=False)
    options = pb.CsvOptions(has_header=False, delimiter=",")
    job = await create_job(jobs, spec(mlp, csv=options), data)
    done = await wait_for(jobs, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    header, rows = parse_results_csv(await results(jobs, job.id))
    assert header == ["score"]
    np.testing.assert_allclose(
        [float(r[0]) for r in rows], predict(job_artifacts["mlp"], x)[:, 0], rtol=1e-6, atol=1e-7
    )


async def test_results_resume_from_an_offset(jobs, mlp) -> None:
    job = await create_job(jobs, spec(mlp), csv_bytes(features(3000, seed=3)))
    await wait_for(jobs, job.id)
    whole = await results(jobs, job.id)
    assert len(whole) > 50_000
    for offset in (1, 12345, len(whole) - 1):
        assert await results(jobs, job.id, offset) == whole[offset:]
    end = [m async for m in jobs.GetJobResults(pb.GetJobResultsRequest(id=job.id, offset=len(whole)))]
    assert [(m.chunk, m.offset, m.total_size_bytes) for m in end] == [(b"", len(whole), len(whole))]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await results(jobs, job.id, len(whole) + 1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_progress_is_visible_while_running_and_watch_ends_terminal(jobs, slow) -> None:
    job = await create_job(jobs, spec(slow), csv_bytes(features(8000, seed=4)))
    seen = [m.job async for m in jobs.WatchJob(pb.WatchJobRequest(id=job.id))]
    assert seen[-1].state == pb.JOB_STATE_SUCCEEDED
    running = [j.rows_done for j in seen if j.state == pb.JOB_STATE_RUNNING]
    assert any(0 < done < 8000 for done in running), running  # progress seen mid-job
    assert running == sorted(running)
    assert seen[-1].rows_done == 8000 and seen[-1].HasField("end_time") and seen[-1].HasField("start_time")


async def test_cancel_stops_a_running_job(jobs, slow, job_server: JobServer, job_events: JobEvents) -> None:
    job = await create_job(jobs, spec(slow), csv_bytes(features(40_000, seed=5)))
    await wait_for(jobs, job.id, lambda j: j.rows_done > 0)
    cancelled = (await jobs.CancelJob(pb.CancelJobRequest(id=job.id))).job
    assert cancelled.state == pb.JOB_STATE_CANCELLED
    # The worker notices at its next progress write and settles the message.
    await job_events.settled(job.id, Outcome.CANCELLED)
    assert (job.id, Outcome.CANCELLED) in job_events.outcomes
    final = (await jobs.GetJob(pb.GetJobRequest(id=job.id))).job
    assert final.state == pb.JOB_STATE_CANCELLED and final.rows_done < 40_000
    assert await job_server.app.blobs.list_keys(f"jobs/{job.id}/attempt-") == []  # the upload was aborted
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.CancelJob(pb.CancelJobRequest(id=job.id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await results(jobs, job.id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"r9,1,2,3\n", "expected 6 fields, found 4"),
        (b"r9,1,2,3,4,n,extra\n", "expected 6 fields, found 7"),
        (b"r9,1,two,3,4,n\n", "column 'b': 'two' is not a valid float"),
        (b"r9,1,,3,4,n\n", "column 'b': empty value"),
    ],
)
async def test_malformed_row_fails_with_its_number(jobs, mlp, line: bytes, reason: str) -> None:
    good = csv_bytes(features(2000, seed=6)).splitlines(keepends=True)
    data = b"".join([*good[:1201], line, *good[1201:]])  # header + 1200 rows, then the bad row: row 1201
    job = await create_job(jobs, spec(mlp), data)
    done = await wait_for(jobs, job.id)
    assert done.state == pb.JOB_STATE_FAILED
    assert done.error == f"row 1201: {reason}"
    assert [(e.row, e.reason) for e in done.row_errors] == [(1201, reason)]
    assert done.attempts == 1  # bad input is not retried


async def test_skip_bad_rows_reports_them(jobs, mlp, job_artifacts) -> None:
    x = features(1000, seed=7)
    lines = csv_bytes(x).splitlines(keepends=True)
    bad = {10: b"bad,row\n", 500: b"r,1,x,3,4,n\n", 999: b"r,1,2,3,4,\xff\xfe\n"}
    data = b"".join([lines[0], *[(bad[i] + line) if i in bad else line for i, line in enumerate(lines[1:], start=1)]])
    job = await create_job(jobs, spec(mlp, skip_bad_rows=True), data)
    done = await wait_for(jobs, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    assert (done.rows_done, done.rows_skipped, done.rows_total) == (1000, 3, 1003)
    # Bad row k comes right before good row k, so it is data row k + (bad rows before it).
    assert [e.row for e in done.row_errors] == [10, 501, 1001]
    assert "expected 6 fields, found 2" in done.row_errors[0].reason
    assert "column 'b'" in done.row_errors[1].reason
    assert "not UTF-8" in done.row_errors[2].reason
    _, rows = parse_results_csv(await results(jobs, job.id))
    np.testing.assert_allclose(
        [float(r[2]) for r in rows], predict(job_artifacts["mlp"], x)[:, 0], rtol=1e-6, atol=1e-7
    )


async def test_spec_errors_name_the_field(jobs, mlp, job_server: JobServer) -> None:
    jobs_dir = job_server.settings.blob_dir / "jobs"  # embedded mode: the blob folder
    folders_before = set(jobs_dir.iterdir()) if jobs_dir.is_dir() else set()
    data = csv_bytes(features(5))
    cases = [
        (pb.CsvOptions(has_header=True, feature_columns=["a", "b", "c", "nope"]), "spec.csv.feature_columns[3]"),
        (pb.CsvOptions(has_header=True, feature_columns=["a", "b", "c"]), "spec.csv.feature_columns"),
        (pb.CsvOptions(has_header=False, feature_columns=["a"]), "spec.csv.feature_columns"),
        (pb.CsvOptions(has_header=True, passthrough_columns=["id", "zzz"]), "spec.csv.passthrough_columns[1]"),
        (pb.CsvOptions(has_header=True, passthrough_columns=["score"]), "spec.csv.passthrough_columns[0]"),
        (pb.CsvOptions(has_header=False, feature_column_indices=[1, 2, 3, 9]), "spec.csv.feature_column_indices[3]"),
        (pb.CsvOptions(has_header=True, delimiter=";;"), "spec.csv.delimiter"),
    ]
    for options, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await create_job(jobs, spec(mlp, csv=options), data)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in violations(err.value), (field, violations(err.value))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create_job(jobs, spec(unique_name("none")), data)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create_job(jobs, spec(mlp), b"")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The refused jobs' inputs were stored, then discarded: their folders went with them.
    assert (set(jobs_dir.iterdir()) if jobs_dir.is_dir() else set()) <= folders_before
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.GetJob(pb.GetJobRequest(id="nope"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.GetJob(pb.GetJobRequest(id="0" * 32))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_jobs_newest_first_with_filters(jobs, registry, job_artifacts) -> None:
    name = unique_name("list")
    await upload_model(registry, name, job_artifacts["mlp"])
    created = [(await create_job(jobs, spec(name), csv_bytes(features(3)))).id for _ in range(5)]
    for job_id in created:
        await wait_for(jobs, job_id)
    listed: list[str] = []
    token = ""
    while True:
        page = await jobs.ListJobs(pb.ListJobsRequest(model_name=name, page_size=2, page_token=token))
        listed += [j.id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert listed == created[::-1]
    done = await jobs.ListJobs(pb.ListJobsRequest(model_name=name, state=pb.JOB_STATE_SUCCEEDED))
    assert len(done.jobs) == 5
    assert not (await jobs.ListJobs(pb.ListJobsRequest(model_name=name, state=pb.JOB_STATE_FAILED))).jobs
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a token is bound to its filters
        await jobs.ListJobs(
            pb.ListJobsRequest(model_name=name, state=pb.JOB_STATE_FAILED, page_token=page.next_page_token or "x")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_version_is_pinned_at_creation(jobs, registry, job_artifacts) -> None:
    name = unique_name("pin")
    await upload_model(registry, name, job_artifacts["mlp"], labels=["stable"])
    ref = model_pb2.ModelRef(name=name, label="stable")
    job = await create_job(jobs, pb.JobSpec(model=ref, csv=spec(name).csv), csv_bytes(features(10)))
    await upload_model(registry, name, job_artifacts["mlp"], labels=["stable"])  # the label moves to 2
    done = await wait_for(jobs, job.id)
    assert (done.model.version, done.spec.model.label) == (1, "stable")


async def test_workers_keep_no_state_per_delivery(jobs, mlp, job_server: JobServer, job_events: JobEvents) -> None:
    """A tt-worker runs for months: nothing its worker and runner keep may grow with the jobs they have run."""
    worker = job_server.worker
    assert worker is not None

    def sizes() -> dict[str, int]:
        return {
            f"{type(owner).__name__}.{name}": len(value)
            for owner in (worker, worker.runner)
            for name, value in vars(owner).items()
            if isinstance(value, list | dict | set | tuple | collections.deque)
        }

    async def run_jobs(count: int) -> None:
        for _ in range(count):
            job = await create_job(jobs, spec(mlp), csv_bytes(features(5)))
            await wait_for(jobs, job.id)
            await job_events.settled(job.id, Outcome.SUCCEEDED)

    await run_jobs(1)
    before = sizes()
    await run_jobs(6)
    for _ in range(100):  # the last delivery's task leaves the worker's set of running tasks just after settling
        grew = {k: (before.get(k, 0), n) for k, n in sizes().items() if n > before.get(k, 0)}
        if not grew:
            break
        await asyncio.sleep(0.02)
    assert not grew


async def test_redelivered_message_for_a_finished_job_is_a_noop(
    jobs, mlp, job_server: JobServer, job_events: JobEvents
) -> None:
    job = await create_job(jobs, spec(mlp), csv_bytes(features(20)))
    done = await wait_for(jobs, job.id)
    await job_server.app.broker.publish(job.id)  # as RabbitMQ would redeliver it
    await job_events.settled(job.id, Outcome.NOOP)
    assert job_events.outcomes.count((job.id, Outcome.NOOP)) == 1
    again = (await jobs.GetJob(pb.GetJobRequest(id=job.id))).job
    assert (again.attempts, again.result_size_bytes, again.end_time) == (1, done.result_size_bytes, done.end_time)
    assert await job_server.app.broker.queued() == 0
    assert await job_server.app.broker.dead_letters() == []


async def test_input_already_in_the_blob_store(jobs, mlp, job_artifacts) -> None:
    x = features(300, seed=8)
    first = await create_job(jobs, spec(mlp), csv_bytes(x))
    await wait_for(jobs, first.id)
    # A second job over the first one's input, named by its blob key: nothing is uploaded again.
    job = await create_job(jobs, spec(mlp, input_blob_key=f"jobs/{first.id}/input.csv"), b"")
    assert job.input_size_bytes == first.input_size_bytes
    done = await wait_for(jobs, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    assert await results(jobs, job.id) == await results(jobs, first.id)
    bad = [
        ("models/x/y", b""),  # a model artifact
        (f"jobs/{first.id}/attempt-1/results.csv", b""),  # another job's results
        ("inputs/no-such-object.csv", b""),
        (f"jobs/{first.id}/input.csv", b"1,2\n"),  # both a key and chunks
    ]
    for key, data in bad:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await create_job(jobs, spec(mlp, input_blob_key=key), data)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.input_blob_key" in violations(err.value)
