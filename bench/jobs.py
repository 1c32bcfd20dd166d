"""``python -m bench.jobs``: batch jobs end to end, a 1,000,000-row x 42-column CSV through the TFaaS MLP.

Production mode on this machine: the server in this process (PostgreSQL, RabbitMQ, blobs in a local folder:
moto's S3 would measure moto), and a real ``tt-worker`` process per job, so that its peak RSS (``VmHWM``)
belongs to that one job. Steps:

1. write the CSVs (42 float columns, 4 decimals, ~290 MB for 1M rows) and the TFaaS MLP (``bench.workload``);
2. per job size (100k, then 1M rows): start a fresh worker, stream the file in with CreateJob, wait for
   SUCCEEDED, read the worker's peak RSS, stop it;
3. print JSON: end-to-end and worker rows/s, the worker's time per stage (the runner records them: parse,
   inference, encode, upload, and time waiting for input; stages overlap, so they add up to more than the
   wall time), and the peak RSS of both jobs and its growth from 100k to 1M rows (target: within 20%).

Needs PostgreSQL and RabbitMQ as for the tests (``make services``). Takes a minute or two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from tensortrigger.v1 import jobs_service_pb2 as pb
from tensortrigger.v1 import jobs_service_pb2_grpc, model_pb2, registry_service_pb2, registry_service_pb2_grpc

from bench import workload

CHUNK = 1 << 20


def write_csv(path: Path, rows: int, seed: int) -> None:
    """``rows`` rows of f0..f41, written by pyarrow in slices (bounded memory)."""
    rng = np.random.default_rng(seed)
    names = [f"f{i}" for i in range(workload.FEATURES)]
    with pacsv.CSVWriter(path, pa.schema([(n, pa.float64()) for n in names])) as writer:
        for start in range(0, rows, 100_000):
            block = np.round(rng.standard_normal((min(100_000, rows - start), workload.FEATURES)), 4)
            writer.write_table(pa.table({n: block[:, i] for i, n in enumerate(names)}))


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a process in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


async def requests(spec: pb.JobSpec, path: Path) -> AsyncIterator[pb.CreateJobRequest]:
    yield pb.CreateJobRequest(spec=spec)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield pb.CreateJobRequest(chunk=chunk)


async def run_job(
    app: Any, channel: grpc.aio.Channel, path: Path, rows: int, env: dict[str, str], log_dir: Path
) -> dict[str, Any]:
    """Start a worker, run one job through it, stop it; what was measured."""
    log = log_dir / f"worker-{rows}.log"
    with log.open("wb") as out:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tt_worker", env=env, stdout=out, stderr=out
        )
    try:
        while b'"worker started"' not in log.read_bytes():
            if worker.returncode is not None:
                raise RuntimeError(log.read_text())
            await asyncio.sleep(0.2)
        idle_rss = peak_rss_mib(worker.pid)[1]
        jobs = jobs_service_pb2_grpc.JobsServiceStub(channel)
        spec = pb.JobSpec(model=model_pb2.ModelRef(name=workload.MODEL_NAME), csv=pb.CsvOptions(has_header=True))
        began = time.perf_counter()
        job = (await jobs.CreateJob(requests(spec, path))).job
        uploaded = time.perf_counter()
        while job.state not in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
            await asyncio.sleep(0.05)
            job = (await jobs.GetJob(pb.GetJobRequest(id=job.id))).job
        finished = time.perf_counter()
        if job.state != pb.JOB_STATE_SUCCEEDED:
            raise RuntimeError(f"job ended {pb.JobState.Name(job.state)}: {job.error}")
        peak, _ = peak_rss_mib(worker.pid)
        stored = await app.jobs.get(job.id)
        run_seconds = (job.end_time.ToNanoseconds() - job.start_time.ToNanoseconds()) / 1e9
        return {
            "rows": job.rows_done,
            "input_mib": round(job.input_size_bytes / 2**20, 1),
            "result_mib": round(job.result_size_bytes / 2**20, 1),
            "upload_seconds": round(uploaded - began, 2),
            "queued_to_start_seconds": round(
                (job.start_time.ToNanoseconds() - job.create_time.ToNanoseconds()) / 1e9, 3
            ),
            "worker_seconds": round(run_seconds, 2),
            "end_to_end_seconds": round(finished - began, 2),
            "rows_per_second_worker": round(job.rows_done / run_seconds),
            "rows_per_second_end_to_end": round(job.rows_done / (finished - began)),
            "worker_stage_seconds": stored.timings,
            "worker_idle_rss_mib": round(idle_rss, 1),
            "worker_peak_rss_mib": round(peak, 1),
        }
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.wait(), 30)
        except TimeoutError:
            worker.kill()
            await worker.wait()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from tt_server.app import Application
    from tt_server.config import Settings

    work = Path(tempfile.mkdtemp(prefix="tt-bench-jobs-"))
    database = f"tt_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.postgres)
    await admin.execute(f'CREATE DATABASE "{database}"')
    dsn = args.postgres.rsplit("/", 1)[0] + "/" + database
    queue = f"tt.bench.{uuid.uuid4().hex[:8]}"
    sizes = [args.small_rows, args.rows]
    files = {}
    for rows in sizes:
        files[rows] = work / f"input-{rows}.csv"
        await asyncio.to_thread(write_csv, files[rows], rows, seed=rows)
    values = {
        "grpc_address": "127.0.0.1:0",
        "data_dir": str(work / "data"),
        "database_url": dsn,
        "amqp_url": args.amqp,
        "amqp_jobs_queue": queue,
        "log_json": "true",
        "log_level": "WARNING",
    }
    app = Application(Settings(**values))  # type: ignore[arg-type]
    await app.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TT_")}
    env.update({f"TT_{k.upper()}": v for k, v in values.items()} | {"TT_LOG_LEVEL": "INFO"})
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            model_path = work / "tfaas.keras"
            await asyncio.to_thread(workload.build_model, model_path)
            registry = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
            header = registry_service_pb2.UploadHeader(model_name=workload.MODEL_NAME)
            data = model_path.read_bytes()
            await registry.UploadModelVersion(
                iter(
                    [
                        registry_service_pb2.UploadModelVersionRequest(header=header),
                        registry_service_pb2.UploadModelVersionRequest(chunk=data),
                    ]
                )
            )
            measured = {rows: await run_job(app, channel, files[rows], rows, env, work) for rows in sizes}
    finally:
        await app.stop(grace=1.0)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        if not args.keep:
            await asyncio.to_thread(shutil.rmtree, work, True)
    small, large = measured[args.small_rows], measured[args.rows]
    growth = large["worker_peak_rss_mib"] / small["worker_peak_rss_mib"] - 1
    return {
        "model": f"TFaaS MLP {workload.FEATURES} -> {'-'.join(map(str, workload.HIDDEN))} -> 1",
        "columns": workload.FEATURES,
        "settings": "defaults (job_batch_rows 16384, job_parse_block_bytes 1 MiB); PostgreSQL, RabbitMQ, local blobs",
        "cpus": os.cpu_count(),
        "jobs": {str(rows): measured[rows] for rows in sizes},
        "peak_rss_growth": f"{growth:+.1%} from {args.small_rows} to {args.rows} rows (target: within 20%)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=100_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (inputs, logs)")
    print(json.dumps(asyncio.run(main_async(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
