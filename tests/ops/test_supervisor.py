"""``tt-server`` with TT_WORKERS=2, a real supervisor and two real workers in embedded mode (SQLite, local blobs):
one port shared by both and by nothing else, registry changes and jobs reaching whichever worker needs them,
a killed worker restarted (health NOT_SERVING meanwhile), and SIGTERM draining both workers' streams.

One supervisor for the whole scenario: each start imports TensorFlow in two processes, the costly part."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensortrigger.v1 import inference_service_pb2 as ipb
from tensortrigger.v1 import (
    inference_service_pb2_grpc,
    jobs_service_pb2_grpc,
    model_pb2,
    registry_service_pb2,
    registry_service_pb2_grpc,
    tensor_pb2,
)
from tensortrigger.v1 import jobs_service_pb2 as jobs_pb2

from tests.api.helpers import upload
from tests.jobs.helpers import create_job, csv_bytes, features, spec, wait_for
from tests.runtime.helpers import constant_model
from tests.serving import server_settings
from tests.waiting import eventually, json_records
from tt_server.app import Application
from tt_server.supervisor import Supervisor

CHANNELS = 8  # separate connections: the kernel spreads them over the workers
GRACE_SECONDS = 30.0  # what the drain may take; a loaded CI machine needs headroom, not the point of the test
SERVING = health_pb2.HealthCheckResponse.SERVING


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


async def _health(channel: grpc.aio.Channel) -> int:
    try:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    except grpc.aio.AioRpcError:
        return -1  # not listening (yet)
    return int(response.status)


def _tensor(x: np.ndarray) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=list(x.shape), content=x.tobytes())


async def _score(channel: grpc.aio.Channel, ref: model_pb2.ModelRef) -> float:
    stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
    response = await stub.Predict(ipb.PredictRequest(model=ref, inputs={"features": _tensor(np.ones((1, 4), "f4"))}))
    return float(np.frombuffer(response.outputs["score"].content, "<f4")[0])


async def test_supervisor_refuses_a_port_a_plain_server_holds(tmp_path: Path) -> None:
    plain = Application(server_settings(tmp_path / "plain"))
    await plain.start()
    try:
        settings = server_settings(tmp_path / "sup", grpc_address=plain.address, workers=2)
        assert await Supervisor(settings).run() == 1  # before starting any worker
    finally:
        await plain.stop(grace=0)


@pytest.mark.timeout(900)  # two start-ups of two TensorFlow processes each, on a loaded 2-core machine
async def test_workers_share_one_port_restart_and_drain(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "TT_WORKERS": "2",
        "TT_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "TT_DATA_DIR": str(tmp_path / "data"),
        "TT_LOG_JSON": "true",
        "TT_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
        # Long enough that only a relayed event can explain another worker switching at once.
        "TT_MODEL_RESOLUTION_TTL_SECONDS": "600",
        "TT_REGISTRY_POLL_SECONDS": "3600",
        "TT_GC_FREEZE": "false",
    }
    paths = []
    for value in (1.0, 2.0):
        paths.append(tmp_path / f"c{value}.keras")
        constant_model(value).save(paths[-1])
    log_path = tmp_path / "server.log"
    begun = time.monotonic()
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tt_server", env=env, stderr=log_file)
    # A local subchannel pool each: channels to one address otherwise share a single connection.
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    try:
        ch = channels[0]

        async def all_serving() -> bool:
            return await _health(ch) == SERVING

        await eventually(all_serving, "workers serving", within=300)
        print(f"\n[supervisor] 2 workers serving after {time.monotonic() - begun:.1f} s")
        workers = _children(proc.pid)
        assert len(workers) == 2

        # The port is shared only among the workers: a plain server (port sharing off, the default) fails.
        plain = Application(server_settings(tmp_path / "plain", grpc_address=f"127.0.0.1:{port}"))
        assert plain.settings.grpc_port_sharing is False
        with pytest.raises(RuntimeError):
            await plain.start()
        await plain.stop(grace=0)

        # A label moved through one worker reaches every worker at once (no TTL, no polling).
        registry = registry_service_pb2_grpc.ModelRegistryServiceStub(ch)
        await upload(registry, "shared", paths[0], labels=["stable"])
        await upload(registry, "shared", paths[1])
        stable = model_pb2.ModelRef(name="shared", label="stable")
        assert [await _score(c, stable) for c in channels] == [1.0] * CHANNELS

        # The workers' log lines reach the file through the supervisor's relay, a moment after they are written.
        def models_loaded() -> list[dict[str, object]]:
            found = [r for r in json_records(log_path) if r["message"] == "model loaded"]
            return found if {r["worker"] for r in found} == {0, 1} else []

        loaded = await eventually(models_loaded, "both workers logged a model loaded (the connections reach both)")
        assert {r["device"] for r in loaded} == {"CPU:0"}  # the device each model is placed on is logged
        await registry.SetLabel(registry_service_pb2.SetLabelRequest(name="shared", label="stable", version=2))

        async def switched() -> bool:
            return [await _score(c, stable) for c in channels] == [2.0] * CHANNELS

        # Within a minute: far below the TTL and the poll period, so only the relayed event explains it.
        await eventually(switched, "label move seen by every worker", within=60)

        # Jobs created on any worker run, all on worker 0 (the one embedded job worker).
        jobs = [jobs_service_pb2_grpc.JobsServiceStub(c) for c in channels]
        created = [await create_job(stub, spec("shared"), csv_bytes(features(50))) for stub in jobs]
        for stub, job in zip(jobs, created, strict=True):
            done = await wait_for(stub, job.id, seconds=120)
            assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error

        def attempts() -> list[dict[str, object]]:
            found = [r for r in json_records(log_path) if r["message"] == "job attempt started"]
            return found if len(found) >= len(created) else []

        ran_on = {r["worker"] for r in await eventually(attempts, "every job's attempt logged")}
        assert ran_on == {0}

        # A killed worker: health leaves SERVING (not all workers serve), the supervisor starts another.
        victim = max(workers)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()

        async def not_serving() -> bool:
            return await _health(ch) != SERVING

        await eventually(not_serving, "health NOT_SERVING while a worker is down", within=60)
        await eventually(all_serving, "workers serving again", within=300)
        print(f"[supervisor] a killed worker replaced in {time.monotonic() - killed:.1f} s")
        now = _children(proc.pid)
        assert len(now) == 2 and victim not in now and workers - {victim} <= now
        restarted = [r for r in json_records(log_path) if r["message"] == "worker exited; restarting it"]
        assert [r["exit_code"] for r in restarted] == [-signal.SIGKILL]
        assert [await _score(c, stable) for c in channels] == [2.0] * CHANNELS

        # SIGTERM: every worker drains; a PredictBatch chunk in flight on each connection is answered.
        streams = [inference_service_pb2_grpc.InferenceServiceStub(c).PredictBatch() for c in channels]
        x = np.ones((16, 4), np.float32)
        for stream in streams:
            await stream.write(ipb.PredictBatchRequest(model=stable, inputs={"features": _tensor(x)}))
            assert (await stream.read()).sequence == 0
            await stream.write(ipb.PredictBatchRequest(inputs={"features": _tensor(x)}))
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for stream in streams:
            answered = await stream.read()
            assert answered.sequence == 1
            assert np.frombuffer(answered.outputs["score"].content, "<f4").tolist() == [2.0] * 16
            await stream.done_writing()
            assert await stream.read() is grpc.aio.EOF
            assert await stream.code() == grpc.StatusCode.OK
        assert await asyncio.wait_for(proc.wait(), GRACE_SECONDS + 10) == 0
        assert time.monotonic() - signalled < GRACE_SECONDS
        print(f"[supervisor] drained and exited in {time.monotonic() - signalled:.1f} s")
    finally:
        for c in channels:
            await c.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    # This host has no GPU: TensorFlow's CUDA probe must not print its error (tt_server/runtime/devices.py).
    assert b"cuInit" not in log_path.read_bytes()
    records = json_records(log_path)
    stopped = [r.get("worker") for r in records if r["message"] == "server stopped"]
    assert sorted(stopped) == [0, 1]  # the killed worker never logged it; its successor did
    assert records[-1]["message"] == "supervisor stopped"
    problems = [
        r for r in records if r["level"] in ("ERROR", "CRITICAL") and r["message"] != "worker exited; restarting it"
    ]
    assert not problems, problems
