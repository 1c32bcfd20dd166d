"""Real ``python -m tt_worker`` processes against the production backends: kill -9 mid-job, a job that kills
every worker that runs it (poison), and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from aiobotocore.session import get_session
from tensortrigger.v1 import jobs_service_pb2 as pb

from tests.api.scrape import Scrape, free_port, scrape
from tests.jobs.helpers import create_job, csv_bytes, features, parse_results_csv, predict, results, spec, wait_for
from tests.waiting import eventually, json_records
from tt_server.app import Application
from tt_server.config import Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# Each test starts tt-worker processes (TensorFlow each) and waits for jobs of several seconds: slow on a loaded
# 2-core machine, where the default per-test timeout would cut a run that is only slow.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROWS = 20_000  # with the slow model: several seconds per attempt


class WorkerProcess:
    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def lines(self) -> list[dict[str, object]]:
        return json_records(self.log)  # whole lines only: the worker may be writing one


def worker_env(settings: Settings, data_dir: Path, **extra: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TT_")}  # the S3 credentials come along
    values: dict[str, object] = {
        "database_url": settings.database_url,
        "s3_bucket": settings.s3_bucket,
        "s3_endpoint_url": settings.s3_endpoint_url,
        "amqp_url": settings.amqp_url,
        "amqp_jobs_queue": settings.amqp_jobs_queue,
        "data_dir": data_dir,
        "log_json": "true",
        "job_batch_rows": settings.job_batch_rows,
        "job_parse_block_bytes": settings.job_parse_block_bytes,
        "job_lease_seconds": settings.job_lease_seconds,
        "job_progress_interval_seconds": settings.job_progress_interval_seconds,
        "job_retry_delay_seconds": settings.job_retry_delay_seconds,
        "job_max_attempts": settings.job_max_attempts,
        "job_s3_allowed_prefixes": json.dumps(settings.job_s3_allowed_prefixes),
        "shutdown_grace_seconds": 20,
        **extra,
    }
    env.update({f"TT_{k.upper()}": str(v) for k, v in values.items()})
    return env


@pytest.fixture
async def start_workers(
    bare_server: Application, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[list[WorkerProcess]]]]:
    """Start tt-worker processes on the server's queue and wait until they consume; all killed afterwards."""
    started: list[WorkerProcess] = []

    async def start(count: int = 1, **settings: object) -> list[WorkerProcess]:
        batch = []
        for _ in range(count):
            data_dir = tmp_path / f"worker-{len(started)}"
            data_dir.mkdir()
            log = data_dir / "worker.log"
            with log.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tt_worker",
                    env=worker_env(bare_server.settings, data_dir, **settings),
                    stdout=out,
                    stderr=out,
                )
            worker = WorkerProcess(process, log)
            started.append(worker)
            batch.append(worker)
        # Each imports TensorFlow and opens three stores; several at once on a loaded 2-core machine take long.
        deadline = time.monotonic() + 240
        for worker in batch:
            while not any(line.get("message") == "worker started" for line in worker.lines()):
                assert worker.process.returncode is None, worker.log.read_text()
                assert time.monotonic() < deadline, "tt-worker did not start"
                await asyncio.sleep(0.2)
        return batch

    yield start
    for worker in started:
        if worker.process.returncode is None:
            worker.process.kill()
            await worker.process.wait()


async def holder_pid(server: Application, job_id: str) -> int:
    """The pid of the worker process whose lease holds the job (owner is host:pid:random)."""
    job = await server.job_store.get_job(job_id)
    assert job.lease_owner is not None
    return int(job.lease_owner.split(":")[1])


async def test_killed_worker_job_is_finished_by_another_with_one_result(
    bare_jobs, bare_models, bare_server: Application, start_workers, job_artifacts
) -> None:
    jobs, slow = bare_jobs, bare_models[1]
    (first,) = await start_workers()
    x = features(ROWS, seed=20)
    job = await create_job(jobs, spec(slow), csv_bytes(x))
    await wait_for(jobs, job.id, lambda j: j.rows_done > 0)
    assert await holder_pid(bare_server, job.id) == first.pid
    first.process.send_signal(signal.SIGKILL)
    assert await first.process.wait() == -signal.SIGKILL
    metrics_port = free_port()
    await start_workers(metrics_address=f"127.0.0.1:{metrics_port}")
    done = await wait_for(jobs, job.id, seconds=120)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    # The second worker's /metrics: it took the job over from a lease that ran out, and ran all of it. The worker
    # counts the job finished just after its commit makes the row SUCCEEDED, so the scrape waits for that.
    version = {"model": slow, "version": "1"}  # the job pinned the newest version, the only one

    async def counted() -> Scrape | None:
        metrics = await scrape(metrics_port)
        return metrics if metrics.has("tt_jobs_finished_total", **version, state="SUCCEEDED") else None

    taken_over = await eventually(counted, "the finished job counted")
    assert taken_over.value("tt_job_lease_expiries_total", **version) == 1
    assert taken_over.value("tt_job_attempts_total", **version) == 1
    assert taken_over.value("tt_jobs_finished_total", **version, state="SUCCEEDED") == 1
    assert taken_over.value("tt_job_rows_total", **version) == ROWS
    assert taken_over.has("tt_broker_queue_messages", queue="dead_letter")
    assert (done.attempts, done.rows_done, done.rows_total) == (2, ROWS, ROWS)
    # Exactly one result: the second attempt's; the first never completed its upload.
    assert await bare_server.blobs.list_keys(f"jobs/{job.id}/attempt-") == [f"jobs/{job.id}/attempt-2/results.csv"]
    # Whatever the killed attempt may have left is the sweeper's: its key is in the blob GC table, the
    # committed one is not.
    swept = await bare_server.metadata.due_blob_gc(2**62, 10_000)
    assert f"jobs/{job.id}/attempt-1/results.csv" in swept
    assert f"jobs/{job.id}/attempt-2/results.csv" not in swept
    _, rows = parse_results_csv(await results(jobs, job.id))
    assert [r[0] for r in rows] == [f"r{i}" for i in range(ROWS)]
    sample = slice(None, None, 101)
    np.testing.assert_allclose(
        [float(r[2]) for r in rows[sample]], predict(job_artifacts["slow"], x[sample])[:, 0], rtol=1e-5, atol=1e-6
    )
    assert await bare_server.broker.dead_letters() == []


async def _multipart_uploads(s3: S3Client, bucket: str) -> list[str]:
    response = await s3.list_multipart_uploads(Bucket=bucket)
    return sorted(upload["Key"] for upload in response.get("Uploads", []))


async def test_a_killed_workers_unfinished_upload_in_a_callers_bucket_is_aborted_by_the_sweep(
    bare_jobs, bare_models, bare_server: Application, start_workers, caller_bucket: str
) -> None:
    jobs, slow = bare_jobs, bare_models[1]
    (worker,) = await start_workers()
    output_uri = f"s3://{caller_bucket}/out/"
    job = await create_job(jobs, spec(slow, output_uri=output_uri), csv_bytes(features(ROWS, seed=23)))
    await wait_for(jobs, job.id, lambda j: j.rows_done > 0)
    worker.process.send_signal(signal.SIGKILL)
    assert await worker.process.wait() == -signal.SIGKILL
    # Cancelled while nobody runs it: no later attempt of this job will clean up after the killed one.
    await jobs.CancelJob(pb.CancelJobRequest(id=job.id))
    result_key = f"out/{job.id}/attempt-1/results.csv"
    # The killed attempt reserved its result key in the caller's bucket before writing to it.
    assert f"s3://{caller_bucket}/{result_key}" in await bare_server.metadata.due_blob_gc(2**62, 10_000)
    endpoint = bare_server.settings.s3_endpoint_url
    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        # What the attempt leaves when killed in the middle of a result over one part (this one's was smaller),
        # next to the caller's own uploads: elsewhere in the bucket, in the allowed prefix, and at a key that
        # merely starts with the attempt's.
        theirs = ["elsewhere/big.bin", "out/theirs.csv", f"{result_key}.copy"]
        for key in [result_key, *theirs]:
            await s3.create_multipart_upload(Bucket=caller_bucket, Key=key)
        assert await _multipart_uploads(s3, caller_bucket) == sorted([result_key, *theirs])
        # A day on, the reservation falls due (moto dates every upload 2010, so age alone proves nothing here).
        await bare_server.metadata.add_blob_gc(f"s3://{caller_bucket}/{result_key}", 0)
        await bare_server.sweeper.collect_garbage()
        assert await _multipart_uploads(s3, caller_bucket) == sorted(theirs)
        # The server's own stale-write sweep never reaches into the caller's bucket.
        await bare_server.sweeper.sweep_leftovers()
        assert await _multipart_uploads(s3, caller_bucket) == sorted(theirs)
    assert f"s3://{caller_bucket}/{result_key}" not in await bare_server.metadata.due_blob_gc(2**62, 10_000)


async def test_job_that_kills_every_worker_fails_and_is_dead_lettered(
    bare_jobs, bare_models, bare_server: Application, start_workers
) -> None:
    jobs, slow = bare_jobs, bare_models[1]
    workers = await start_workers(3, job_max_attempts=2)
    job = await create_job(jobs, spec(slow), csv_bytes(features(ROWS, seed=21)))
    killed = set()
    for attempt in (1, 2):

        def running(j: pb.Job, n: int = attempt) -> bool:
            return j.attempts == n and j.rows_done > 0

        await wait_for(jobs, job.id, running, seconds=120)
        pid = await holder_pid(bare_server, job.id)
        victim = next(w for w in workers if w.pid == pid)
        victim.process.send_signal(signal.SIGKILL)
        await victim.process.wait()
        killed.add(pid)
    assert len(killed) == 2
    done = await wait_for(jobs, job.id, seconds=120)
    assert done.state == pb.JOB_STATE_FAILED
    assert done.error.startswith("gave up after 2 attempts; each attempt ended without a result")

    # The row turns FAILED before the worker rejects the message (a crash in between must not leave a job with no
    # message and no end), so the dead letter may land a moment after the state is seen.
    async def dead_lettered() -> bool:
        return job.id in await bare_server.broker.dead_letters()

    await eventually(dead_lettered, "the given-up job's message dead-lettered", pause=0.1)
    survivor = next(w for w in workers if w.pid not in killed)
    assert survivor.process.returncode is None  # the worker that gave up is fine


async def test_sigterm_hands_the_job_back_uncharged(
    bare_jobs, bare_models, bare_server: Application, start_workers
) -> None:
    jobs, slow = bare_jobs, bare_models[1]
    (first,) = await start_workers()
    # Its start-up line names the stores it uses, as the server's does (it named only the queue).
    (started,) = [line for line in first.lines() if line.get("message") == "worker started"]
    s = bare_server.settings
    assert (started["database"], started["blobs"]) == ("postgresql", "s3")
    assert str(started["blobs_at"]).startswith(f"s3://{s.s3_bucket}/") and str(started["jobs"]).startswith("rabbitmq ")
    job = await create_job(jobs, spec(slow), csv_bytes(features(ROWS, seed=22)))
    await wait_for(jobs, job.id, lambda j: j.rows_done > 0)
    first.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(first.process.wait(), 60) == 0
    released = (await jobs.GetJob(pb.GetJobRequest(id=job.id))).job
    assert (released.state, released.attempts, released.error) == (pb.JOB_STATE_QUEUED, 0, "")
    assert any(line.get("message") == "job released at shutdown" for line in first.lines())
    await start_workers()
    done = await wait_for(jobs, job.id, seconds=120)
    assert (done.state, done.attempts, done.rows_done) == (pb.JOB_STATE_SUCCEEDED, 1, ROWS)
    assert await bare_server.blobs.list_keys(f"jobs/{job.id}/attempt-") == [f"jobs/{job.id}/attempt-2/results.csv"]
