"""SIGTERM with streams open, on a real `tt-server` process over PostgreSQL, S3 and RabbitMQ: health goes
NOT_SERVING at once, the PredictBatch chunk in flight is answered, the Train stream checkpoints (its on_abort
policy) and ends with UNAVAILABLE, the process exits 0 within the grace period, and the stores close cleanly
(no error in the log)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import asyncpg
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensortrigger.v1 import inference_service_pb2 as ipb
from tensortrigger.v1 import inference_service_pb2_grpc, model_pb2, registry_service_pb2_grpc

from tests.api.helpers import upload
from tests.services import service_missing
from tests.serving import _fresh_database, unique_name
from tests.training.helpers import Teacher, chunks, config, save, student, tensor

AMQP_HOST = os.environ.get("TT_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("TT_TEST_AMQP_PORT", "5672"))
GRACE_SECONDS = 30.0  # headroom for a loaded CI machine: the test is that the drain ends within it, not how fast


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _amqp_or_skip(url: str) -> None:
    try:
        await (await aio_pika.connect(url, timeout=5)).close()
    except (OSError, aio_pika.exceptions.AMQPError) as e:
        service_missing(f"RabbitMQ is not reachable ({e}); start it with: rabbitmq-server -detached")


async def test_sigterm_with_open_streams(postgres_dsn: str, s3_endpoint: str, tmp_path: Path) -> None:
    amqp_url = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/"
    await _amqp_or_skip(amqp_url)
    database_url = await _fresh_database(postgres_dsn)
    queue = f"tt.jobs.sigterm-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    env = {
        **os.environ,  # includes the dummy AWS credentials the s3_endpoint fixture set
        "TT_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "TT_DATA_DIR": str(tmp_path / "data"),
        "TT_DATABASE_URL": database_url,
        "TT_S3_BUCKET": f"tt-{uuid.uuid4().hex[:12]}",
        "TT_S3_ENDPOINT_URL": s3_endpoint,
        "TT_AMQP_URL": amqp_url,
        "TT_AMQP_JOBS_QUEUE": queue,
        "TT_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
        "TT_DRAIN_DELAY_SECONDS": "0",
        "TT_LOG_JSON": "true",
    }
    artifact = save(student(), tmp_path / "student.keras")
    log_path = tmp_path / "server.log"
    log_file = log_path.open("wb")  # a pipe nobody reads could fill up and stall the server
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tt_server", env=env, stderr=log_file)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=90)
            registry = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
            inference = inference_service_pb2_grpc.InferenceServiceStub(channel)
            name = unique_name("sigterm")
            await upload(registry, name, artifact)

            # A PredictBatch stream, warm: one chunk answered.
            batch = inference.PredictBatch(metadata=(("x-request-id", "batch-1"),))
            x = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
            await batch.write(
                ipb.PredictBatchRequest(model=model_pb2.ModelRef(name=name), inputs={"features": tensor(x)})
            )
            assert (await batch.read()).sequence == 0

            # A Train stream, training: started, examples sent, progress seen. on_abort: checkpoint (the default).
            train = inference.Train(metadata=(("x-request-id", "train-1"),))
            await train.write(config(name, micro_batch_size=32))
            assert (await train.read()).WhichOneof("event") == "started"
            tx, ty = Teacher().data(512, seed=1)
            for request in chunks(tx, ty, 128):
                await train.write(request)
            assert (await train.read()).WhichOneof("event") == "progress"

            # The next chunk is in flight when the signal arrives.
            await batch.write(ipb.PredictBatchRequest(inputs={"features": tensor(x)}, request_id="in-flight"))
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            status = health_pb2.HealthCheckResponse.SERVING
            # NOT_SERVING is the first step of the drain: well within the grace period even on a loaded machine.
            while status == health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() - signalled < 10.0, "health still SERVING 10 s after SIGTERM"
                await asyncio.sleep(0.01)
                status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=10)).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            not_serving_after = time.monotonic() - signalled

            answered = await batch.read()
            assert (answered.request_id, answered.sequence) == ("in-flight", 1)
            assert answered.outputs["score"].shape == [16, 1]
            await batch.done_writing()
            assert await batch.read() is grpc.aio.EOF
            assert await batch.code() == grpc.StatusCode.OK

            events = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                while (response := await train.read()) is not grpc.aio.EOF:
                    events.append(response)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            checkpoints = [r.checkpoint for r in events if r.WhichOneof("event") == "checkpoint"]
            assert [c.version.version for c in checkpoints] == [2]

        assert await asyncio.wait_for(proc.wait(), GRACE_SECONDS + 5) == 0
        exited_after = time.monotonic() - signalled
        assert exited_after < GRACE_SECONDS
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log_file.close()

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    messages = [r["message"] for r in records]
    problems = [r for r in records if r["level"] in ("ERROR", "CRITICAL") or "exception" in r]
    assert not problems, problems
    assert messages.index("draining") < messages.index("server stopped")  # the last step: stores closed
    # Lines logged while serving a call carry its request id, the Train session's checkpoint included.
    (published,) = [r for r in records if r["message"] == "model version published by training"]
    assert published["request_id"] == "train-1"

    # The checkpoint is a committed version, with its lineage.
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT version, parent_version FROM model_versions WHERE model_name = $1 ORDER BY version", name
        )
    finally:
        await conn.close()
    assert [(r["version"], r["parent_version"]) for r in rows] == [(1, None), (2, 1)]
    print(f"\n[sigterm] not_serving_after_s={not_serving_after:.3f}, exited_after_s={exited_after:.3f}")

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        amqp_channel = await connection.channel()
        for queue_name in (queue, f"{queue}.dead"):
            await amqp_channel.queue_delete(queue_name)
        await amqp_channel.exchange_delete(f"{queue}.dlx")
