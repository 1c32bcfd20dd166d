"""Faults with workers in this process over real RabbitMQ / PostgreSQL / S3: a dropped broker connection, two
competing workers with duplicate messages, a stale attempt, and a poison job retried until dead-lettered."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from tensortrigger.v1 import jobs_service_pb2 as pb

from tests.jobs.conftest import InProcessWorker
from tests.jobs.helpers import (
    create_job,
    csv_bytes,
    features,
    parse_results_csv,
    predict,
    results,
    spec,
    wait_for,
)
from tt_server.app import Application
from tt_server.jobs.runner import JobRunner, Outcome
from tt_server.runtime.loader import loader_factory
from tt_server.runtime.manager import ModelManager
from tt_server.storage.local_broker import LocalBroker
from tt_server.storage.sql_jobs import SqlJobStore
from tt_server.types import JobState


@pytest.fixture
async def workers(bare_server: Application) -> AsyncIterator[Callable[..., InProcessWorker]]:
    """Start in-process workers on the server's queue; all stopped afterwards."""
    started: list[InProcessWorker] = []

    async def start(name: str = "w") -> InProcessWorker:
        worker = InProcessWorker(bare_server.settings, f"{name}-{uuid.uuid4().hex[:4]}")
        await worker.start()
        started.append(worker)
        return worker

    yield start  # type: ignore[misc]
    for worker in started:
        await worker.stop()


def store_of(server: Application) -> SqlJobStore:
    store = server.job_store
    assert isinstance(store, SqlJobStore)
    return store


async def test_broker_connection_dropped_mid_job_still_completes_once(
    bare_jobs, bare_models, bare_server: Application, workers, close_all_amqp_connections, job_artifacts, job_events
) -> None:
    jobs, (_, slow) = bare_jobs, bare_models
    await workers()
    x = features(30_000, seed=10)  # several seconds: still running when rabbitmqctl gets through
    job = await create_job(jobs, spec(slow), csv_bytes(x))
    await wait_for(jobs, job.id, lambda j: j.rows_done > 0)
    await asyncio.to_thread(close_all_amqp_connections)  # the worker's and the server's connections
    assert (await jobs.GetJob(pb.GetJobRequest(id=job.id))).job.state == pb.JOB_STATE_RUNNING  # still mid-job
    done = await wait_for(jobs, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    assert (done.attempts, done.rows_done) == (1, 30_000)
    assert [a for a in job_events.attempts if a[0] == job.id] == [(job.id, 1)]
    # The message was redelivered after the reconnect; this worker held it until the job was done, then acked.
    await job_events.settled(job.id, Outcome.NOOP)
    assert sorted(o for j, o in job_events.outcomes if j == job.id) == [Outcome.NOOP, Outcome.SUCCEEDED]
    assert await bare_server.blobs.list_keys(f"jobs/{job.id}/attempt-") == [f"jobs/{job.id}/attempt-1/results.csv"]
    _, rows = parse_results_csv(await results(jobs, job.id))
    sample = slice(None, None, 97)  # the slow model is slow here too
    np.testing.assert_allclose(
        [float(r[2]) for r in rows[sample]], predict(job_artifacts["slow"], x[sample])[:, 0], rtol=1e-5, atol=1e-6
    )
    # Both sides reconnected: a new job is published and run.
    after = await create_job(jobs, spec(bare_models[0]), csv_bytes(features(10)))
    assert (await wait_for(jobs, after.id)).state == pb.JOB_STATE_SUCCEEDED
    assert await bare_server.broker.queued() == 0 and await bare_server.broker.dead_letters() == []


async def test_competing_workers_never_run_an_attempt_twice(
    bare_jobs, bare_models, bare_server: Application, workers, job_events
) -> None:
    jobs, mlp = bare_jobs, bare_models[0]
    await workers("a")
    await workers("b")
    created = [(await create_job(jobs, spec(mlp), csv_bytes(features(1500, seed=i)))).id for i in range(8)]
    for job_id in created:  # duplicates: both workers may hold a message for the same job at once
        await bare_server.broker.publish(job_id)
    for job_id in created:
        done = await wait_for(jobs, job_id)
        assert (done.state, done.attempts) == (pb.JOB_STATE_SUCCEEDED, 1), done.error
    runs = [run for run in job_events.attempts if run[0] in created]
    assert sorted(runs) == sorted((job_id, 1) for job_id in created)  # each job ran once, as attempt 1
    for job_id in created:  # every duplicate is settled as a no-op, once the attempt's delivery is settled
        await job_events.settled(job_id, Outcome.NOOP)
        await job_events.settled(job_id, Outcome.SUCCEEDED)
    settled = [o for j, o in job_events.outcomes if j in created]
    assert sorted(settled) == sorted([Outcome.SUCCEEDED] * 8 + [Outcome.NOOP] * 8)
    assert await bare_server.broker.queued() == 0


async def test_stale_attempt_cannot_commit(
    bare_jobs, bare_models, bare_server: Application, workers, job_events
) -> None:
    jobs, slow = bare_jobs, bare_models[1]
    await workers()
    job = await create_job(jobs, spec(slow), csv_bytes(features(20_000, seed=11)))
    await wait_for(jobs, job.id, lambda j: j.rows_done > 0)
    store = store_of(bare_server)
    # The worker's lease runs out (as if it had stalled) and another attempt takes the job over.
    await store._db.execute("UPDATE jobs SET lease_until = 0 WHERE id = $1", job.id)
    assert await store.lease_job(job.id, "thief", 60) == 2
    await job_events.settled(job.id, Outcome.LOST)
    assert (job.id, Outcome.LOST) in job_events.outcomes
    current = await store.get_job(job.id)
    assert (current.state, current.attempt, current.lease_owner) == (JobState.RUNNING, 2, "thief")
    assert await bare_server.blobs.list_keys(f"jobs/{job.id}/attempt-") == []  # attempt 1 wrote nothing
    await store.cancel_job(job.id)


class _BrokenInput:
    """A blob store whose reads of job inputs fail with an unexpected error: a job that crashes every attempt."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def get_stream(self, key: str, offset: int = 0, chunk_size: int = 1 << 20):
        if key.endswith("/input.csv"):
            raise RuntimeError("simulated crash while reading the input")
        return self._inner.get_stream(key, offset, chunk_size)


async def test_poison_job_is_retried_then_failed_and_dead_lettered(
    bare_jobs, bare_models, bare_server: Application
) -> None:
    jobs, mlp = bare_jobs, bare_models[0]
    job = await create_job(jobs, spec(mlp), csv_bytes(features(10)))
    # The message is taken here by a runner in this test, on an in-process queue, so no worker interferes.
    broker = LocalBroker()
    await broker.open()
    await broker.publish(job.id)
    s = bare_server.settings
    manager = ModelManager(
        bare_server.metadata, bare_server.blobs, s.data_dir / "poison-cache", s, loader_factory=loader_factory(s)
    )
    runner = JobRunner(bare_server.job_store, _BrokenInput(bare_server.blobs), manager, s)  # type: ignore[arg-type]
    outcomes = []
    deliveries = broker.consume(prefetch=1)
    try:
        for _ in range(s.job_max_attempts + 1):
            outcomes.append(await runner.handle(await asyncio.wait_for(anext(deliveries), 30)))
    finally:
        runner.close()
        await manager.close()
    assert outcomes == [Outcome.RETRY] * s.job_max_attempts + [Outcome.GAVE_UP]
    failed = (await jobs.GetJob(pb.GetJobRequest(id=job.id))).job
    assert failed.state == pb.JOB_STATE_FAILED
    assert failed.attempts == s.job_max_attempts
    assert failed.error.startswith(f"gave up after {s.job_max_attempts} attempts; last error: internal error")
    assert await broker.dead_letters() == [job.id]


async def test_a_failed_job_leaves_no_uncommitted_result_behind(
    bare_jobs, bare_models, bare_server: Application
) -> None:
    jobs, mlp = bare_jobs, bare_models[0]
    job = await create_job(jobs, spec(mlp), csv_bytes(features(10)) + b"11,1,2,not-a-number,4,x\n")
    # What an attempt that wrote its result and died before committing leaves (in a caller's bucket no GC
    # entry would ever sweep it): the attempt that ends the job deletes it.
    stray = f"jobs/{job.id}/attempt-7/results.csv"

    async def one_chunk() -> AsyncIterator[bytes]:
        yield b"id,score\n"

    await bare_server.blobs.put_stream(stray, one_chunk())
    broker = LocalBroker()
    await broker.open()
    await broker.publish(job.id)
    s = bare_server.settings
    manager = ModelManager(
        bare_server.metadata, bare_server.blobs, s.data_dir / "failed-cache", s, loader_factory=loader_factory(s)
    )
    runner = JobRunner(bare_server.job_store, bare_server.blobs, manager, s)
    try:
        delivery = await asyncio.wait_for(anext(broker.consume(prefetch=1)), 30)
        assert await runner.handle(delivery) == Outcome.FAILED
    finally:
        runner.close()
        await manager.close()
    failed = (await jobs.GetJob(pb.GetJobRequest(id=job.id))).job
    assert failed.state == pb.JOB_STATE_FAILED and "row 11" in failed.error, failed.error
    assert await bare_server.blobs.list_keys(f"jobs/{job.id}/attempt-") == []
