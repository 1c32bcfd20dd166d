"""Parquet and JSON Lines inputs, Parquet results, on both modes (embedded, and production with a worker over
AMQP): columns by name, features as one list column or one column per feature, typed pass-through columns,
row numbers of malformed rows, and the checks CreateJob makes against the schema. Then progress: totals
(Parquet's from its metadata, CSV's estimated), rate and ETA, and ``tt jobs watch``'s bar."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tensortrigger.v1 import jobs_service_pb2 as pb

from tests.clients.helpers import TT
from tests.jobs.helpers import (
    code_of,
    create_job,
    csv_bytes,
    features,
    predict,
    results,
    spec,
    wait_for,
)

# The production mode only (PostgreSQL, S3 on moto, RabbitMQ, a worker over AMQP): the readers are the same in
# both modes, and the local blob store's reads are covered by the CSV tests; this keeps the module's time down.
pytestmark = pytest.mark.parametrize("job_server", ["production"], indirect=True)


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=row_group_size)
    return out.getvalue()


def table_spec(model: str, fmt: int, **kw: object) -> pb.JobSpec:
    csv = pb.CsvOptions(
        feature_columns=kw.pop("feature_columns", []),  # type: ignore[arg-type]
        passthrough_columns=kw.pop("passthrough_columns", ["id"]),  # type: ignore[arg-type]
    )
    return spec(model, input_format=fmt, csv=csv, **kw)


async def test_parquet_list_column_in_typed_parquet_out(jobs, mlp, job_artifacts) -> None:
    x = features(5000, seed=50)
    ids = np.arange(5000, dtype=np.int64) * 3
    table = pa.table(
        {
            "id": ids,
            "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4),
            "ignored": pa.array(["x"] * 5000),
        }
    )
    # Several row groups, sent in small chunks: the job reads it row group by row group.
    job = await create_job(
        jobs,
        table_spec(mlp, pb.INPUT_FORMAT_PARQUET, output_format=pb.OUTPUT_FORMAT_PARQUET),
        parquet_bytes(table, row_group_size=700),
        chunk=50_000,
    )
    done = await wait_for(jobs, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    assert (done.rows_done, done.rows_total) == (5000, 5000)
    out = pq.read_table(io.BytesIO(await results(jobs, job.id)))
    assert out.schema.names == ["id", "score"]
    assert out.schema.field("id").type == pa.int64()  # typed as it came in
    assert out.schema.field("score").type == pa.float32()
    assert out.column("id").to_pylist() == ids.tolist()
    np.testing.assert_allclose(
        out.column("score").to_numpy(), predict(job_artifacts["mlp"], x)[:, 0], rtol=1e-6, atol=1e-7
    )


async def test_parquet_one_column_per_feature_to_csv(jobs, mlp, job_artifacts) -> None:
    x = features(800, seed=51)
    table = pa.table(
        {"note": [f"n{i}" for i in range(800)], **{c: x[:, j].astype(np.float64) for j, c in enumerate("abcd")}}
    )
    job_spec = table_spec(mlp, pb.INPUT_FORMAT_PARQUET, feature_columns=list("abcd"), passthrough_columns=["note"])
    job = await create_job(jobs, job_spec, parquet_bytes(table))
    done = await wait_for(jobs, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    lines = (await results(jobs, job.id)).decode().splitlines()
    assert lines[0] == "note,score"
    assert [line.split(",")[0] for line in lines[1:]] == [f"n{i}" for i in range(800)]
    got = np.array([float(line.split(",")[1]) for line in lines[1:]], dtype=np.float32)
    np.testing.assert_allclose(got, predict(job_artifacts["mlp"], x)[:, 0], rtol=1e-6, atol=1e-7)


async def test_jsonl_in_with_bad_rows_skipped_and_numbered(jobs, mlp, job_artifacts) -> None:
    x = features(900, seed=52)
    lines = [json.dumps({"id": i, "features": [float(v) for v in row]}) for i, row in enumerate(x)]
    lines[10] = json.dumps({"id": 10, "features": [1.0, 2.0]})  # too short
    lines[500] = json.dumps({"id": 500, "features": None})
    lines[700] = "{not json"
    lines[701] = json.dumps({"id": 701, "features": [1.0, 2.0, None, 4.0]})  # in the block of a bad line
    data = ("\n".join(lines) + "\n").encode()
    job = await create_job(
        jobs, table_spec(mlp, pb.INPUT_FORMAT_JSONL, skip_bad_rows=True, output_format=pb.OUTPUT_FORMAT_JSONL), data
    )
    done = await wait_for(jobs, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    assert (done.rows_done, done.rows_skipped) == (896, 4)
    assert [e.row for e in done.row_errors] == [11, 501, 701, 702]
    assert "holds 2 values" in done.row_errors[0].reason
    records = [json.loads(line) for line in (await results(jobs, job.id)).decode().splitlines()]
    kept = [i for i in range(900) if i not in (10, 500, 700, 701)]
    assert [r["id"] for r in records] == kept  # numbers stay numbers
    got = np.array([r["score"] for r in records], dtype=np.float32)
    np.testing.assert_allclose(got, predict(job_artifacts["mlp"], x[kept])[:, 0], rtol=1e-6, atol=1e-7)

    # Without skip_bad_rows the first bad row fails the job, by number.
    job = await create_job(jobs, table_spec(mlp, pb.INPUT_FORMAT_JSONL), data)
    failed = await wait_for(jobs, job.id)
    assert failed.state == pb.JOB_STATE_FAILED
    assert failed.error.startswith("row 11: ")


async def test_schema_checks_at_create(jobs, mlp) -> None:
    x = features(10)
    wide = pa.table({"id": [1] * 10, "features": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(50, "f4")), 5)})
    texty = pa.table({"id": [1] * 10, **{c: [str(v) for v in x[:, j]] for j, c in enumerate("abcd")}})
    cases = [
        (table_spec(mlp, pb.INPUT_FORMAT_PARQUET), parquet_bytes(wide), "spec.csv.feature_columns"),
        (table_spec(mlp, pb.INPUT_FORMAT_PARQUET, feature_columns=list("abcd")), parquet_bytes(texty), "spec.csv"),
        (table_spec(mlp, pb.INPUT_FORMAT_PARQUET, passthrough_columns=["nope"]), parquet_bytes(wide), "nope"),
        (table_spec(mlp, pb.INPUT_FORMAT_PARQUET), b"id,a,b,c,d\n1,2,3,4,5\n", "not a Parquet file"),
        (table_spec(mlp, pb.INPUT_FORMAT_JSONL), b"[1, 2, 3]\n", "not a JSON object"),
    ]
    for job_spec, data, expected in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create_job(jobs, job_spec, data)
        assert code_of(caught.value) == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert expected in (caught.value.details() or ""), caught.value.details()


async def test_client_sends_parquet_by_its_extension(job_server, mlp, job_artifacts, tmp_path: Path) -> None:
    import tensortrigger as tt

    x = features(300, seed=53)
    source = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(300)], "features": list(x.astype(np.float64))}), source)
    async with tt.AsyncClient(job_server.app.address) as client:
        job = await client.submit_job(mlp, source, passthrough_columns=["id"], output_format="parquet")
        assert job.spec.input_format == pb.INPUT_FORMAT_PARQUET
        async for state in client.watch_job(job.id):
            last = state
        assert last.state == pb.JOB_STATE_SUCCEEDED, last.error
        await client.download_job_results(job.id, tmp_path / "scores.parquet")
    out = pq.read_table(tmp_path / "scores.parquet")
    assert out.column("id").to_pylist() == [f"r{i}" for i in range(300)]
    np.testing.assert_allclose(
        out.column("score").to_numpy(), predict(job_artifacts["mlp"], x)[:, 0], rtol=1e-6, atol=1e-7
    )


def running(job: pb.Job) -> bool:
    return job.state == pb.JOB_STATE_RUNNING and job.rows_done > 0 and job.rows_per_second > 0


async def test_csv_progress_estimates_the_total_and_the_time_left(jobs, slow, mlp) -> None:
    rows = 6000
    job = await create_job(jobs, spec(slow), csv_bytes(features(rows, seed=60)))
    seen = await wait_for(jobs, job.id, running)
    await jobs.CancelJob(pb.CancelJobRequest(id=job.id))
    assert seen.rows_total == 0  # not known before the end for CSV...
    assert abs(seen.rows_total_estimate - rows) <= rows * 0.05, seen  # ...but estimated from the bytes read
    assert seen.eta_seconds > 0
    expected = (seen.rows_total_estimate - seen.rows_done) / seen.rows_per_second
    assert seen.eta_seconds == pytest.approx(expected, rel=0.01)
    job = await create_job(jobs, spec(mlp), csv_bytes(features(rows, seed=60)))
    done = await wait_for(jobs, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    assert (done.rows_total, done.rows_total_estimate, done.eta_seconds) == (rows, 0, 0)
    assert done.rows_per_second > 0


async def test_parquet_total_is_known_while_running(jobs, slow) -> None:
    rows = 5000
    x = features(rows, seed=61)
    table = pa.table({"id": np.arange(rows), "features": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4)})
    job = await create_job(jobs, table_spec(slow, pb.INPUT_FORMAT_PARQUET), parquet_bytes(table, 1000))
    seen = await wait_for(jobs, job.id, running)
    await jobs.CancelJob(pb.CancelJobRequest(id=job.id))
    assert (seen.rows_total, seen.rows_total_estimate) == (rows, 0)
    assert seen.rows_done < rows and seen.eta_seconds > 0


async def test_cli_watch_shows_a_bar_with_total_rate_and_eta(jobs, slow, job_server) -> None:
    job = await create_job(jobs, spec(slow), csv_bytes(features(20_000, seed=62)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TT_")}
    # TTY_COMPATIBLE and a real TERM: rich draws the bar as for a person at a terminal.
    env.update({"COLUMNS": "200", "TTY_COMPATIBLE": "1", "TERM": "xterm-256color"})
    watch = await asyncio.create_subprocess_exec(
        *TT,
        "--address",
        job_server.app.address,
        "jobs",
        "watch",
        job.id,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert watch.stderr is not None
    seen = b""
    try:
        async with asyncio.timeout(90):
            while not re.search(rb"/~[0-9,]+ [0-9,]+k? rows/s ETA 0:\d\d:\d\d", seen):
                chunk = await watch.stderr.read(65536)
                assert chunk, seen[-2000:]
                seen += chunk
    finally:
        await jobs.CancelJob(pb.CancelJobRequest(id=job.id))
        out, _ = await watch.communicate()
    assert watch.returncode == 1 and b"CANCELLED" in out
