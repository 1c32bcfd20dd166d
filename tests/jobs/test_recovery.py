"""Recovery in seconds, with real ``python -m tt_worker`` processes on PostgreSQL, RabbitMQ and S3 (moto).

kill -9: RabbitMQ sees the connection drop and redelivers the job's message to a worker that is already running;
that worker waits out the short lease (``job_lease_seconds``, renewed by the progress heartbeat) and starts
attempt 2. SIGSTOP: the paused worker keeps its connection, so the message is freed only when RabbitMQ's AMQP
heartbeat check drops it; once another attempt holds the job, the resumed worker must write nothing.
"""

from __future__ import annotations

import asyncio
import io
import signal
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tensortrigger.v1 import jobs_service_pb2 as pb

from tests.jobs.helpers import create_job, csv_bytes, features, parse_results_csv, predict, results, spec, wait_for
from tests.jobs.test_worker_process import holder_pid, start_workers  # noqa: F401 - the fixture
from tt_server.app import Application
from tt_server.config import Settings

pytestmark = pytest.mark.slow

ROWS = 20_000  # the slow model: several seconds per attempt
DEFAULTS = Settings()  # the production lease and heartbeat, not the tests' shrunk ones


async def _check_exact(jobs, server: Application, job_id: str, x: np.ndarray, artifact) -> pb.Job:  # type: ignore[no-untyped-def]
    done = await wait_for(jobs, job_id, seconds=120)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    assert (done.attempts, done.rows_done, done.rows_total) == (2, ROWS, ROWS)
    assert await server.blobs.list_keys(f"jobs/{job_id}/attempt-") == [f"jobs/{job_id}/attempt-2/results.csv"]
    _, rows = parse_results_csv(await results(jobs, job_id))
    assert [r[0] for r in rows] == [f"r{i}" for i in range(ROWS)]  # every row once, in order
    sample = slice(None, None, 97)
    np.testing.assert_allclose(
        [float(r[2]) for r in rows[sample]], predict(artifact, x[sample])[:, 0], rtol=1e-5, atol=1e-6
    )
    return done


async def test_killed_worker_restarts_within_5_seconds_and_a_paused_one_writes_nothing(
    bare_jobs,
    bare_models,
    bare_server: Application,
    start_workers,  # noqa: F811 - the fixture imported above
    job_artifacts,
) -> None:
    jobs, slow = bare_jobs, bare_models[1]
    workers = await start_workers(
        3,
        job_lease_seconds=DEFAULTS.job_lease_seconds,
        job_progress_interval_seconds=DEFAULTS.job_progress_interval_seconds,
        amqp_heartbeat_seconds=2,
    )
    by_pid = {w.pid: w for w in workers}

    # kill -9 mid-job: attempt 2 starts on a running worker within 5 s.
    x = features(ROWS, seed=30)
    job = await create_job(jobs, spec(slow), csv_bytes(x))
    await wait_for(jobs, job.id, lambda j: j.rows_done > 0)
    killed = by_pid.pop(await holder_pid(bare_server, job.id))
    killed.process.send_signal(signal.SIGKILL)
    began = time.monotonic()
    await killed.process.wait()
    await wait_for(jobs, job.id, lambda j: j.attempts == 2 and j.state == pb.JOB_STATE_RUNNING, seconds=30)
    restart = time.monotonic() - began
    print(f"restart after kill -9: {restart:.2f} s")
    assert restart < 5.0, f"the job restarted {restart:.1f} s after kill -9"
    await _check_exact(jobs, bare_server, job.id, x, job_artifacts["slow"])

    # SIGSTOP mid-job: another worker takes over; the resumed one is fenced off and writes nothing.
    x = features(ROWS, seed=31)
    job = await create_job(jobs, spec(slow), csv_bytes(x))
    await wait_for(jobs, job.id, lambda j: j.rows_done > 0, seconds=60)
    paused = by_pid[await holder_pid(bare_server, job.id)]
    paused.process.send_signal(signal.SIGSTOP)
    try:
        running = await wait_for(jobs, job.id, lambda j: j.attempts == 2 and j.rows_done > 0, seconds=60)
        assert await holder_pid(bare_server, job.id) != paused.pid
    finally:
        paused.process.send_signal(signal.SIGCONT)
    done = await _check_exact(jobs, bare_server, job.id, x, job_artifacts["slow"])
    assert done.rows_done >= running.rows_done

    def fenced() -> bool:
        stopped = "job attempt stopped: another attempt holds the job"
        return any(line.get("message") == stopped for line in paused.lines())

    deadline = time.monotonic() + 30
    while not fenced():
        assert time.monotonic() < deadline, paused.log.read_text()
        await asyncio.sleep(0.2)
    again = (await jobs.GetJob(pb.GetJobRequest(id=job.id))).job
    assert (again.state, again.attempts, again.rows_done, again.result_size_bytes) == (
        done.state,
        done.attempts,
        done.rows_done,
        done.result_size_bytes,
    )
    assert await bare_server.blobs.list_keys(f"jobs/{job.id}/attempt-") == [f"jobs/{job.id}/attempt-2/results.csv"]
    assert paused.process.returncode is None  # it carries on serving the queue

    # A Parquet job on these processes (read by ranged reads of the blob store, row group by row group).
    x = features(3000, seed=32)
    table = pa.table({"id": np.arange(3000), "features": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4)})
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=1000)
    parquet_spec = spec(
        bare_models[0], input_format=pb.INPUT_FORMAT_PARQUET, csv=pb.CsvOptions(passthrough_columns=["id"])
    )
    job = await create_job(jobs, parquet_spec, out.getvalue())
    done = await wait_for(jobs, job.id, seconds=60)
    assert (done.state, done.rows_done, done.attempts) == (pb.JOB_STATE_SUCCEEDED, 3000, 1), done.error
