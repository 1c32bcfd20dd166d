"""JobStore semantics on both databases: leases, fencing by attempt, cancel, give-up, sweeps, listing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from tt_server.errors import FailedPrecondition, InvalidArgument, NotFound
from tt_server.storage.jobs import JobProgress
from tt_server.storage.sql_jobs import SqlJobStore
from tt_server.types import CsvOptions, Job, JobSpec, JobState, ModelRef, OutputFormat, RowError


def new_job(model: str = "m", **spec: object) -> Job:
    return Job(
        id=uuid.uuid4().hex,
        model_name=model,
        model_version=3,
        spec=JobSpec(
            ModelRef(model, label="stable"),
            CsvOptions(has_header=True, feature_columns=("a", "b"), passthrough_columns=("id",)),
            OutputFormat.JSONL,
            skip_bad_rows=True,
            annotations={"team": "ml"},
            **spec,  # type: ignore[arg-type]
        ),
        state=JobState.QUEUED,
        input_blob_key="jobs/x/input.csv",
        input_size=123,
        created_at=datetime.now(UTC),
    )


async def test_create_and_get_round_trip(job_store: SqlJobStore) -> None:
    draft = new_job()
    await job_store.add_blob_gc(draft.input_blob_key, 0)
    job = await job_store.create_job(draft, owns_input=True)
    assert job.spec == draft.spec
    assert (job.state, job.attempts, job.attempt, job.rows_done, job.input_size) == (JobState.QUEUED, 0, 0, 0, 123)
    assert await job_store.due_blob_gc(2**62, 10) == []  # the job claimed its input
    assert await job_store.get_job(job.id) == job
    with pytest.raises(NotFound):
        await job_store.get_job(uuid.uuid4().hex)


async def test_lease_is_exclusive_and_fences_stale_attempts(job_store: SqlJobStore) -> None:
    store = job_store
    job = await store.create_job(new_job(), owns_input=False)
    assert await store.lease_job(job.id, "w1", 0.05) == 1
    assert await store.lease_job(job.id, "w2", 30) is None  # held by a live lease
    await asyncio.sleep(0.1)  # w1's lease runs out without renewal
    assert await store.lease_job(job.id, "w2", 30) == 2
    progress = JobProgress(rows_done=5, rows_skipped=1, row_errors=(RowError(3, "bad"),))
    # Attempt 1 is stale now: nothing it writes lands.
    assert not await store.update_job_progress(job.id, 1, progress, 30)
    assert not await store.renew_job_lease(job.id, 1, 30)
    assert not await store.commit_job(job.id, 1, "jobs/x/attempt-1/results.csv", 10, progress)
    assert not await store.fail_job(job.id, 1, "boom", progress)
    assert not await store.release_job(job.id, 1, "", charge=False)
    # Attempt 2 holds it.
    assert await store.update_job_progress(job.id, 2, progress, 30)
    running = await store.get_job(job.id)
    assert (running.state, running.attempt, running.attempts, running.lease_owner) == (JobState.RUNNING, 2, 2, "w2")
    assert (running.rows_done, running.rows_skipped, running.row_errors) == (5, 1, (RowError(3, "bad"),))
    await store.add_blob_gc("jobs/x/attempt-2/results.csv", 0)
    final = JobProgress(rows_done=7, rows_skipped=1, rows_total=8, timings={"parse_seconds": 0.5})
    assert await store.commit_job(job.id, 2, "jobs/x/attempt-2/results.csv", 99, final)
    done = await store.get_job(job.id)
    assert (done.state, done.result_blob_key, done.result_size, done.rows_total) == (
        JobState.SUCCEEDED,
        "jobs/x/attempt-2/results.csv",
        99,
        8,
    )
    assert done.timings == {"parse_seconds": 0.5} and done.ended_at is not None and done.lease_owner is None
    assert await store.due_blob_gc(2**62, 10) == []
    assert await store.lease_job(job.id, "w3", 30) is None  # finished jobs are never leased again
    assert not await store.commit_job(job.id, 2, "other", 1, final)  # nor committed twice


async def test_concurrent_leases_hand_out_one_attempt(make_job_store) -> None:
    stores = [make_job_store() for _ in range(4)]
    for store in stores:
        await store.open()
    job = await stores[0].create_job(new_job(), owns_input=False)
    won = await asyncio.gather(*(s.lease_job(job.id, f"w{i}", 30) for i, s in enumerate(stores) for _ in range(3)))
    assert sorted(won, key=lambda a: a or 0) == [None] * 11 + [1]


async def test_release_fail_and_give_up(job_store: SqlJobStore) -> None:
    store = job_store
    job = await store.create_job(new_job(), owns_input=False)
    assert await store.lease_job(job.id, "w", 30) == 1
    assert await store.release_job(job.id, 1, "", charge=False)  # clean shutdown: not charged
    released = await store.get_job(job.id)
    assert (released.state, released.attempts, released.attempt) == (JobState.QUEUED, 0, 1)
    for attempt in (2, 3):
        assert await store.lease_job(job.id, "w", 30) == attempt
        assert await store.release_job(job.id, attempt, "store down", charge=True)
    assert not await store.give_up_job(job.id, 3, "x")  # 2 attempts charged, 3 allowed
    assert await store.lease_job(job.id, "w", 30) == 4
    assert not await store.give_up_job(job.id, 3, "x")  # held by a live lease
    assert await store.release_job(job.id, 4, "store down", charge=True)
    assert await store.give_up_job(job.id, 3, "gave up")
    failed = await store.get_job(job.id)
    assert (failed.state, failed.error, failed.attempts) == (JobState.FAILED, "gave up", 3)

    other = await store.create_job(new_job(), owns_input=False)
    assert await store.lease_job(other.id, "w", 30) == 1
    assert await store.fail_job(other.id, 1, "row 3: bad", JobProgress(row_errors=(RowError(3, "bad"),)))
    assert (await store.get_job(other.id)).row_errors == (RowError(3, "bad"),)


async def test_cancel(job_store: SqlJobStore) -> None:
    store = job_store
    queued = await store.create_job(new_job(), owns_input=False)
    assert (await store.cancel_job(queued.id)).state is JobState.CANCELLED
    with pytest.raises(FailedPrecondition):
        await store.cancel_job(queued.id)
    running = await store.create_job(new_job(), owns_input=False)
    assert await store.lease_job(running.id, "w", 30) == 1
    cancelled = await store.cancel_job(running.id)
    assert (cancelled.state, cancelled.lease_owner) == (JobState.CANCELLED, None)
    assert not await store.update_job_progress(running.id, 1, JobProgress(), 30)  # the worker finds out
    with pytest.raises(NotFound):
        await store.cancel_job(uuid.uuid4().hex)


async def test_abandon_stale_and_unfinished(job_store: SqlJobStore) -> None:
    store = job_store
    a = await store.create_job(new_job(), owns_input=False)
    b = await store.create_job(new_job(), owns_input=False)
    c = await store.create_job(new_job(), owns_input=False)
    assert await store.abandon_job(c.id, "could not be queued")
    assert not await store.abandon_job(c.id, "again")
    assert await store.lease_job(b.id, "w", 0.01) == 1
    assert await store.unfinished_jobs(10) == [a.id, b.id]
    await asyncio.sleep(0.05)
    assert sorted(await store.stale_jobs(0.02, 10)) == sorted([a.id, b.id])
    assert await store.stale_jobs(0.02, 10) == []  # claimed: each is republished once per idle period


async def test_list_jobs_pages_newest_first(make_job_store) -> None:
    store = make_job_store()
    await store.open()
    ids = []
    for i in range(7):
        ids.append((await store.create_job(new_job("m" if i % 2 else "n"), owns_input=False)).id)
    assert await store.lease_job(ids[6], "w", 30) == 1

    async def all_pages(model: str | None, state: JobState | None, size: int) -> list[str]:
        found, token = [], ""
        while True:
            page = await store.list_jobs(model, state, size, token)
            found += [j.id for j in page.items]
            if not (token := page.next_page_token):
                return found

    assert await all_pages(None, None, 3) == ids[::-1]
    assert await all_pages("m", None, 2) == [ids[5], ids[3], ids[1]]
    assert await all_pages(None, JobState.RUNNING, 1) == [ids[6]]
    token = (await store.list_jobs("m", None, 1, "")).next_page_token
    with pytest.raises(InvalidArgument):
        await store.list_jobs("n", None, 1, token)  # bound to its filters
    other = make_job_store(token_secret=b"another secret")
    await other.open()
    with pytest.raises(InvalidArgument):
        await other.list_jobs("m", None, 1, token)
