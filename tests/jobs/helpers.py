"""Helpers for the job tests: building inputs and models, and driving jobs through the API."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
from tensortrigger.v1 import jobs_service_pb2 as pb
from tensortrigger.v1 import jobs_service_pb2_grpc, model_pb2, registry_service_pb2, registry_service_pb2_grpc

from tt_server.jobs.runner import Outcome

TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


def slow_mlp(out_dir: Path) -> Path:
    """Same signature as ``tests.models.build_mlp`` (features (-1, 4) -> score (-1, 1)), but one 512-wide
    layer applied 100 times: ~26 M multiply-adds per row (a few thousand rows per second) from a 1 MiB file,
    so that a job runs long enough to be watched, cancelled, disconnected or killed halfway."""
    import keras

    inputs = keras.Input(shape=(4,), name="features")
    hidden = keras.layers.Dense(512, activation="tanh", name="widen")(inputs)
    shared = keras.layers.Dense(512, activation="tanh", name="shared")
    for _ in range(100):
        hidden = shared(hidden)
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(hidden)
    target = out_dir / "slow.keras"
    keras.Model(inputs, score, name="slow").save(target)
    return target


def features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)


def csv_bytes(x: np.ndarray, ids: bool = True, header: bool = True) -> bytes:
    """Rows ``id,a,b,c,d[,note]``: an id and a note to pass through, around the four features."""
    out = io.StringIO()
    if header:
        out.write("id,a,b,c,d,note\n" if ids else "a,b,c,d\n")
    for i, row in enumerate(x):
        values = ",".join(repr(float(v)) for v in row)
        out.write(f"r{i},{values},n{i % 7}\n" if ids else values + "\n")
    return out.getvalue().encode()


async def upload_model(
    registry: registry_service_pb2_grpc.ModelRegistryServiceStub, name: str, path: Path, **header: object
) -> int:
    data = path.read_bytes()  # noqa: ASYNC240 - a small test artifact

    async def requests() -> AsyncIterator[registry_service_pb2.UploadModelVersionRequest]:
        h = registry_service_pb2.UploadHeader(model_name=name, **header)  # type: ignore[arg-type]
        yield registry_service_pb2.UploadModelVersionRequest(header=h)
        for i in range(0, len(data), 256 * 1024):
            yield registry_service_pb2.UploadModelVersionRequest(chunk=data[i : i + 256 * 1024])

    return (await registry.UploadModelVersion(requests())).version.version


def spec(model: str, **kw: object) -> pb.JobSpec:
    """A JobSpec for ``csv_bytes`` input: header, features a-d, id and note passed through."""
    csv = kw.pop("csv", None) or pb.CsvOptions(
        has_header=True, feature_columns=["a", "b", "c", "d"], passthrough_columns=["id", "note"]
    )
    return pb.JobSpec(model=model_pb2.ModelRef(name=model), csv=csv, **kw)  # type: ignore[arg-type]


async def create_job(
    stub: jobs_service_pb2_grpc.JobsServiceStub, job_spec: pb.JobSpec, data: bytes, chunk: int = 64 * 1024
) -> pb.Job:
    async def requests() -> AsyncIterator[pb.CreateJobRequest]:
        yield pb.CreateJobRequest(spec=job_spec)
        for i in range(0, len(data), chunk):
            yield pb.CreateJobRequest(chunk=data[i : i + chunk])

    return (await stub.CreateJob(requests())).job


async def wait_for(
    stub: jobs_service_pb2_grpc.JobsServiceStub,
    job_id: str,
    done: Callable[[pb.Job], bool] = lambda job: job.state in TERMINAL,
    seconds: float = 60.0,
) -> pb.Job:
    """Poll GetJob until ``done(job)``; the job then."""
    deadline = time.monotonic() + seconds
    while True:
        job = (await stub.GetJob(pb.GetJobRequest(id=job_id))).job
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {pb.JobState.Name(job.state)} after {seconds} s"
        await asyncio.sleep(0.05)


async def results(stub: jobs_service_pb2_grpc.JobsServiceStub, job_id: str, offset: int = 0) -> bytes:
    out = b""
    async for message in stub.GetJobResults(pb.GetJobResultsRequest(id=job_id, offset=offset)):
        assert message.offset == offset + len(out)
        out += message.chunk
    return out


def predict(path: Path, x: np.ndarray) -> np.ndarray:
    """The model's outputs computed in this process, straight from the artifact."""
    import keras

    model = keras.saving.load_model(path, compile=False)
    return np.asarray(model(x, training=False))


def parse_results_csv(data: bytes) -> tuple[list[str], list[list[str]]]:
    import csv

    rows = list(csv.reader(io.StringIO(data.decode())))
    return rows[0], rows[1:]


def code_of(error: BaseException) -> grpc.StatusCode:
    assert isinstance(error, grpc.aio.AioRpcError)
    return error.code()


class JobEvents(logging.Handler):
    """What the workers in this process did, read from their log lines (the workers keep no such record:
    a tt-worker runs for months): attempts started and deliveries settled, oldest first."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.attempts: list[tuple[str, int]] = []  # (job id, attempt number)
        self.outcomes: list[tuple[str, Outcome]] = []  # (job id, how its delivery was settled)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message == "job attempt started":
            self.attempts.append((record.job, record.attempt))  # type: ignore[attr-defined]
        elif message == "job delivery settled":
            self.outcomes.append((record.job, Outcome(record.outcome)))  # type: ignore[attr-defined]

    async def settled(self, job_id: str, outcome: Outcome, count: int = 1, seconds: float = 20.0) -> None:
        """Wait until ``job_id`` has had ``count`` deliveries settled as ``outcome``."""
        for _ in range(int(seconds / 0.02)):
            if self.outcomes.count((job_id, outcome)) >= count:
                return
            await asyncio.sleep(0.02)


@contextlib.contextmanager
def observe_jobs() -> Iterator[JobEvents]:
    events = JobEvents()
    logger = logging.getLogger("tt_server.jobs")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(events)
    try:
        yield events
    finally:
        logger.removeHandler(events)
        logger.setLevel(level)
