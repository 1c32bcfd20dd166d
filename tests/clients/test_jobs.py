"""Batch jobs through the Python client (sync and asyncio) and the ``tt jobs`` commands, against a real server
with its in-process queue and worker: submit a CSV file, watch, list, fetch (and resume) results, cancel."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tensortrigger as tt
from tensortrigger.v1 import jobs_service_pb2_grpc

from tests import models
from tests.clients.helpers import AnyClient, call, collect, embedded_only, keras_reference, tt_cli
from tests.serving import unique_name
from tt_server.api.jobs import JobsServicer
from tt_server.app import Application

pytestmark = pytest.mark.skipif(
    JobsServicer.CreateJob is jobs_service_pb2_grpc.JobsServiceServicer.CreateJob,
    reason="pending server side: JobsService is not implemented yet (tt_server/api/jobs.py); the client is ready",
)


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.mlp_keras(tmp_path_factory.mktemp("job-models"))


@pytest.fixture(scope="module")
async def mlp(app: Application, mlp_file: Path) -> str:
    name = unique_name("jobs")
    async with tt.AsyncClient(app.address) as client:
        await client.upload(name, mlp_file)
    return name


def write_csv(path: Path, rows: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)
    lines = ["id,a,b,c,d", *(f"r{i}," + ",".join(repr(float(v)) for v in row) for i, row in enumerate(x))]
    path.write_text("\n".join(lines) + "\n")
    return x


def scores(results: bytes) -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(io.StringIO(results.decode())))
    assert rows[0] == ["id", "score"]
    return [r[0] for r in rows[1:]], np.array([float(r[1]) for r in rows[1:]], np.float32)


COLUMNS = {"feature_columns": ["a", "b", "c", "d"], "passthrough_columns": ["id"]}


async def test_job_round_trip(client: AnyClient, mlp: str, mlp_file: Path, tmp_path: Path) -> None:
    x = write_csv(tmp_path / "in.csv", 300)
    sent: list[tuple[int, int]] = []
    job = await call(client, "submit_job", mlp, tmp_path / "in.csv", progress=lambda *p: sent.append(p), **COLUMNS)
    assert (job.model.name, job.model.version) == (mlp, 1)  # pinned at creation
    assert sent[-1][0] == sent[-1][1] == (tmp_path / "in.csv").stat().st_size

    states = await collect(client, "watch_job", job.id)
    assert states[-1].state == tt.v1.jobs_service_pb2.JOB_STATE_SUCCEEDED, states[-1].error
    assert [s.rows_done for s in states] == sorted(s.rows_done for s in states)
    done = await call(client, "get_job", job.id)
    assert (done.rows_done, done.rows_total) == (300, 300)
    assert job.id in [j.id for j in await collect(client, "list_jobs", model=mlp)]
    assert job.id in [j.id for j in await collect(client, "list_jobs", state="succeeded", page_size=1)]
    assert job.id not in [j.id for j in await collect(client, "list_jobs", state="failed")]

    full = b"".join(await collect(client, "job_results", job.id))
    ids, got = scores(full)
    assert ids == [f"r{i}" for i in range(300)]
    np.testing.assert_allclose(got, np.asarray(keras_reference(mlp_file)(x))[:, 0], atol=1e-5)
    assert b"".join(await collect(client, "job_results", job.id, offset=100)) == full[100:]

    # An interrupted download leaves dest.part; the next download resumes from its size.
    dest = tmp_path / "results.csv"
    (tmp_path / "results.csv.part").write_bytes(full[:1000])
    progress: list[tuple[int, int]] = []
    await call(client, "download_job_results", job.id, dest, progress=lambda *p: progress.append(p))
    assert dest.read_bytes() == full and not (tmp_path / "results.csv.part").exists()
    assert progress[0][0] > 1000 and progress[-1] == (len(full), len(full))

    with pytest.raises(tt.FailedPreconditionError):
        await call(client, "cancel_job", job.id)  # already finished
    with pytest.raises(tt.NotFoundError):
        await call(client, "get_job", "0" * 32)


async def test_cancel_a_running_job(app: Application, tmp_path: Path) -> None:
    from tests.jobs.helpers import slow_mlp

    name = unique_name("slow")
    write_csv(tmp_path / "big.csv", 30_000)
    async with tt.AsyncClient(app.address) as client:
        await client.upload(name, slow_mlp(tmp_path))
        job = await client.submit_job(name, tmp_path / "big.csv", **COLUMNS)
        cancelled = await client.cancel_job(job.id)
        assert cancelled.state in (tt.v1.jobs_service_pb2.JOB_STATE_CANCELLED, tt.v1.jobs_service_pb2.JOB_STATE_RUNNING)
        final = [j async for j in client.watch_job(job.id)][-1]
        assert final.state == tt.v1.jobs_service_pb2.JOB_STATE_CANCELLED
        assert final.rows_done < 30_000
        with pytest.raises(tt.FailedPreconditionError):
            await asyncio.wait_for(anext(client.job_results(job.id)), 10)


@embedded_only
async def test_jobs_commands(app: Application, mlp: str, tmp_path: Path) -> None:
    a = app.address
    write_csv(tmp_path / "in.csv", 50)
    columns = ["--feature-column", "a", "--feature-column", "b", "--feature-column", "c", "--feature-column", "d"]
    submitted = await tt_cli(
        "--json", "jobs", "submit", mlp, str(tmp_path / "in.csv"), *columns, "--passthrough", "id", "--watch", address=a
    )
    assert submitted.code == 0, submitted.err
    job = submitted.json()
    assert (job["state"], job["rows_done"]) == ("SUCCEEDED", 50)

    assert job["id"] in [j["id"] for j in (await tt_cli("--json", "jobs", "list", "--model", mlp, address=a)).json()]
    listed = await tt_cli("jobs", "list", "--state", "succeeded", address=a)
    assert listed.code == 0 and job["id"] in listed.out
    watched = await tt_cli("jobs", "watch", job["id"], address=a)
    assert watched.code == 0 and "SUCCEEDED" in watched.out

    to_stdout = await tt_cli("jobs", "results", job["id"], address=a)
    assert scores(to_stdout.out.encode())[0] == [f"r{i}" for i in range(50)]
    saved = await tt_cli("--json", "jobs", "results", job["id"], "-o", str(tmp_path / "out.csv"), address=a)
    assert saved.code == 0 and (tmp_path / "out.csv").read_text() == to_stdout.out
    assert json.loads(saved.out)["size_bytes"] == len(to_stdout.out.encode())

    assert (await tt_cli("jobs", "cancel", job["id"], address=a)).code == 1  # finished: FAILED_PRECONDITION
    assert (await tt_cli("jobs", "show", "0" * 32, address=a)).code == 3
    queued = await tt_cli("jobs", "submit", mlp, str(tmp_path / "in.csv"), *columns, address=a)
    assert queued.code == 0 and ("QUEUED" in queued.out or "RUNNING" in queued.out)
