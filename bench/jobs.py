"""``python -m bench.jobs``: batch jobs end to end, 1,000,000 rows x 42 features through the TFaaS MLP.

Production mode on this machine: the server in this process (PostgreSQL, RabbitMQ, blobs in a local folder),
and real ``tt-worker`` processes. Four variants, each on a fresh worker with a 100k-row and a 1M-row job:

* ``csv-streamed``: a CSV (42 float columns, 4 decimals, ~296 MB for 1M rows) streamed in with CreateJob;
* ``csv-s3``: the same CSV already in object storage, named with ``spec.input_uri`` (nothing is uploaded);
* ``parquet-streamed`` / ``parquet-s3``: a Parquet file with one fixed-size-list ``features`` column (float32).

A streamed input is sent by a client in a process of its own (``bench.jobs_submit``), as a real caller: from
the server's process it would share its GIL and the Python work of reading and serialising 300 MB.

Object storage is moto's S3 server in a process of its own (``moto_server``): a Python server, so the S3
variants measure moto's read speed too, not S3's. Per job: end-to-end rows/s (submit -> SUCCEEDED, incl. the
upload for streamed inputs), worker rows/s (its start to its end), the worker's CPU seconds for the job and
rows per worker CPU-second (steadier than wall time on a shared machine), time per stage, and the worker's
peak RSS (``VmHWM``, reset between the two jobs through ``/proc/<pid>/clear_refs``). The load average is
printed with the results: the figures are only comparable between runs on an equally loaded machine.

Needs PostgreSQL and RabbitMQ as for the tests (``make services``). Takes a few minutes.
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
import pyarrow.parquet as pq
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


def write_parquet(path: Path, rows: int, seed: int) -> None:
    """The same values as ``write_csv`` as one fixed-size-list ``features`` column of float32, in row groups
    of 100k rows."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([("features", pa.list_(pa.float32(), workload.FEATURES))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 100_000):
            block = np.round(rng.standard_normal((min(100_000, rows - start), workload.FEATURES)), 4)
            values = pa.array(block.astype(np.float32).ravel())
            writer.write_table(pa.table({"features": pa.FixedSizeListArray.from_arrays(values, workload.FEATURES)}))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _started(log: Path) -> bool:
    return b'"worker started"' in log.read_bytes()


def load_average() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a process in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


async def requests(spec: pb.JobSpec, path: Path | None) -> AsyncIterator[pb.CreateJobRequest]:
    yield pb.CreateJobRequest(spec=spec)
    if path is None:
        return
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield pb.CreateJobRequest(chunk=chunk)


async def submit_from_own_process(address: str, spec: pb.JobSpec, path: Path) -> tuple[str, float, float]:
    """Stream ``path`` with CreateJob from a process of its own (``bench.jobs_submit``), as a real caller;
    (job id, wall-clock time the call began, time it returned)."""
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.jobs_submit",
        address,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await client.communicate(spec.SerializeToString())
    if client.returncode != 0:
        raise RuntimeError(f"bench.jobs_submit exited with {client.returncode}")
    answer = json.loads(out.decode().strip().splitlines()[-1])
    return answer["id"], answer["began"], answer["returned"]


async def start_worker(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tt_worker", env=env, stdout=out, stderr=out
        )
    while not _started(log):
        if worker.returncode is not None:
            raise RuntimeError(f"tt-worker exited; see {log}")
        await asyncio.sleep(0.2)
    return worker


async def stop_worker(worker: asyncio.subprocess.Process) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(worker.wait(), 30)
    except TimeoutError:
        worker.kill()
        await worker.wait()


async def run_job(
    app: Any,
    channel: grpc.aio.Channel,
    worker: asyncio.subprocess.Process,
    spec: pb.JobSpec,
    path: Path | None,
    in_process_client: bool = False,
) -> dict[str, Any]:
    """Run one job (``path``: streamed in; None: ``spec.input_uri``) on ``worker``; what was measured.
    ``in_process_client``: stream ``path`` from this (the server's) process, as the bench did before."""
    reset_peak_rss(worker.pid)
    idle_rss = peak_rss_mib(worker.pid)[1]
    cpu_before = cpu_seconds(worker.pid)
    jobs = jobs_service_pb2_grpc.JobsServiceStub(channel)
    if path is None or in_process_client:  # nothing to stream (the call is short) or asked to: from here
        began = time.time()
        job = (await jobs.CreateJob(requests(spec, path))).job
        uploaded = time.time()
    else:
        job_id, began, uploaded = await submit_from_own_process(app.address, spec, path)
        job = (await jobs.GetJob(pb.GetJobRequest(id=job_id))).job
    while job.state not in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
        await asyncio.sleep(0.05)
        job = (await jobs.GetJob(pb.GetJobRequest(id=job.id))).job
    finished = time.time()
    if job.state != pb.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"job ended {pb.JobState.Name(job.state)}: {job.error}")
    cpu = cpu_seconds(worker.pid) - cpu_before
    peak, _ = peak_rss_mib(worker.pid)
    stored = await app.jobs.get(job.id)
    run_seconds = (job.end_time.ToNanoseconds() - job.start_time.ToNanoseconds()) / 1e9
    return {
        "rows": job.rows_done,
        "input_mib": round(job.input_size_bytes / 2**20, 1),
        "result_mib": round(job.result_size_bytes / 2**20, 1),
        "create_job_seconds": round(uploaded - began, 2),
        "upload_mib_per_second": round(job.input_size_bytes / 2**20 / (uploaded - began), 1) if path else None,
        "queued_to_start_seconds": round((job.start_time.ToNanoseconds() - job.create_time.ToNanoseconds()) / 1e9, 3),
        "worker_seconds": round(run_seconds, 2),
        "end_to_end_seconds": round(finished - began, 2),
        "rows_per_second_worker": round(job.rows_done / run_seconds),
        "rows_per_second_end_to_end": round(job.rows_done / (finished - began)),
        "worker_cpu_seconds": round(cpu, 2),
        "rows_per_worker_cpu_second": round(job.rows_done / cpu) if cpu > 0 else None,
        "worker_stage_seconds": stored.timings,
        "worker_idle_rss_mib": round(idle_rss, 1),
        "worker_peak_rss_mib": round(peak, 1),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from tt_server.app import Application
    from tt_server.config import Settings
    from tt_server.storage.s3 import S3BlobStore

    work = Path(tempfile.mkdtemp(prefix="tt-bench-jobs-"))
    database = f"tt_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.postgres)
    await admin.execute(f'CREATE DATABASE "{database}"')
    dsn = args.postgres.rsplit("/", 1)[0] + "/" + database
    queue = f"tt.bench.{uuid.uuid4().hex[:8]}"
    sizes = [args.small_rows, args.rows]
    files: dict[tuple[str, int], Path] = {}
    for rows in sizes:
        files["csv", rows] = work / f"input-{rows}.csv"
        files["parquet", rows] = work / f"input-{rows}.parquet"
        await asyncio.to_thread(write_csv, files["csv", rows], rows, seed=rows)
        await asyncio.to_thread(write_parquet, files["parquet", rows], rows, seed=rows)
    # moto's S3 server in a process of its own, so that it does not share this process's GIL.
    s3_port = free_port()
    moto = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        str(s3_port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{s3_port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
    lake = S3BlobStore("bench-lake", endpoint, "us-east-1")
    for _ in range(100):
        try:
            await lake.open()
            break
        except Exception:
            await asyncio.sleep(0.2)
    for (fmt, rows), file in files.items():
        await lake.put_file(f"inputs/{rows}.{fmt}", file)
    await lake.close()
    values = {
        "grpc_address": "127.0.0.1:0",
        "data_dir": str(work / "data"),
        "database_url": dsn,
        "amqp_url": args.amqp,
        "amqp_jobs_queue": queue,
        "log_json": "true",
        "log_level": "WARNING",
        "s3_endpoint_url": endpoint,
        "job_s3_allowed_prefixes": json.dumps(["s3://bench-lake/inputs/"]),
    }
    app = Application(Settings(**{**values, "job_s3_allowed_prefixes": ["s3://bench-lake/inputs/"]}))  # type: ignore[arg-type]
    await app.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TT_")}
    env.update({f"TT_{k.upper()}": v for k, v in values.items()} | {"TT_LOG_LEVEL": "INFO"})
    load_before = load_average()
    results: dict[str, dict[str, Any]] = {}
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
            for fmt in args.formats:
                for source in ("streamed", "s3"):
                    name = f"{fmt}-{source}"
                    worker = await start_worker(env, work / f"worker-{name}.log")
                    try:
                        measured = {}
                        for rows in sizes:
                            spec = pb.JobSpec(
                                model=model_pb2.ModelRef(name=workload.MODEL_NAME),
                                csv=pb.CsvOptions(has_header=True),
                                input_format=pb.INPUT_FORMAT_PARQUET if fmt == "parquet" else pb.INPUT_FORMAT_CSV,
                            )
                            path: Path | None = files[fmt, rows]
                            if source == "s3":
                                spec.input_uri = f"s3://bench-lake/inputs/{rows}.{fmt}"
                                path = None
                            measured[str(rows)] = await run_job(app, channel, worker, spec, path)
                            if path is not None and args.compare_client:
                                # Paired: the same job on the same worker, its input streamed from this process.
                                measured[f"{rows} in-process client"] = await run_job(
                                    app, channel, worker, spec, path, in_process_client=True
                                )
                    finally:
                        await stop_worker(worker)
                    small, large = measured[str(args.small_rows)], measured[str(args.rows)]
                    growth = large["worker_peak_rss_mib"] / small["worker_peak_rss_mib"] - 1
                    results[name] = {
                        "jobs": measured,
                        "peak_rss_growth": f"{growth:+.1%} from {args.small_rows} to {args.rows} rows",
                    }
    finally:
        await app.stop(grace=1.0)
        moto.terminate()
        await moto.wait()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        if not args.keep:
            await asyncio.to_thread(shutil.rmtree, work, True)
    return {
        "model": f"TFaaS MLP {workload.FEATURES} -> {'-'.join(map(str, workload.HIDDEN))} -> 1",
        "columns": workload.FEATURES,
        "settings": "defaults; PostgreSQL, RabbitMQ, local blobs; s3 inputs from moto_server",
        "cpus": os.cpu_count(),
        "load_average_before_after": [load_before, load_average()],
        "variants": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=100_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (inputs, logs)")
    parser.add_argument(
        "--compare-client",
        action="store_true",
        help="also run each streamed job with its client in the server's process (paired comparison)",
    )
    parser.add_argument("--formats", nargs="+", default=["csv", "parquet"], choices=["csv", "parquet"])
    print(json.dumps(asyncio.run(main_async(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
