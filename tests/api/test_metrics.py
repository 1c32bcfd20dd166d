"""Prometheus metrics are exposed over HTTP and move with traffic."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import urllib.request

import grpc
import numpy as np
from tensortrigger.v1 import (
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_pb2,
    registry_service_pb2_grpc,
    tensor_pb2,
)

from tests import models
from tests.api.helpers import upload
from tests.api.scrape import parse
from tests.serving import server_settings
from tt_server.app import Application


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    return await asyncio.to_thread(get)


def _value(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


async def test_metrics_exposed_and_moving(tmp_path) -> None:
    port = _free_port()
    application = Application(server_settings(tmp_path, metrics_address=f"127.0.0.1:{port}"))
    await application.start()
    try:
        async with grpc.aio.insecure_channel(application.address) as ch:
            registry = registry_service_pb2_grpc.ModelRegistryServiceStub(ch)
            inference = inference_service_pb2_grpc.InferenceServiceStub(ch)
            await upload(registry, "metered", models.mlp_keras(tmp_path))
            before = await _scrape(port)
            x = np.ones((2, 4), np.float32)
            request = inference_service_pb2.PredictRequest(
                model=model_pb2.ModelRef(name="metered"),
                inputs={
                    "features": tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[2, 4], content=x.tobytes())
                },
            )
            await asyncio.gather(*(inference.Predict(request) for _ in range(20)))
            bad = inference_service_pb2.PredictRequest(model=model_pb2.ModelRef(name="no-such-model"))
            with contextlib.suppress(grpc.aio.AioRpcError):
                await inference.Predict(bad)
        after = await _scrape(port)
    finally:
        await application.stop(grace=1.0)
    ok = 'tt_rpcs_total{code="OK",method="/tensortrigger.v1.InferenceService/Predict"}'
    missing = 'tt_rpcs_total{code="NOT_FOUND",method="/tensortrigger.v1.InferenceService/Predict"}'
    assert _value(after, ok) - _value(before, ok) == 20
    assert _value(after, missing) - _value(before, missing) == 1
    assert _value(after, 'tt_batch_rows_sum{model="metered",version="1"}') >= 40
    assert _value(after, 'tt_model_loads_total{model="metered",version="1"}') == 1
    assert "tt_rpc_duration_seconds_bucket" in after


async def test_job_and_training_metrics(tmp_path) -> None:
    """A batch job and a training session through the Python client move the jobs and training series."""
    import tensortrigger as tt

    port = _free_port()
    application = Application(server_settings(tmp_path, metrics_address=f"127.0.0.1:{port}"))
    await application.start()
    try:
        model = models.build_mlp()
        model.compile(loss="binary_crossentropy", optimizer="adam")
        path = tmp_path / "mlp.keras"
        model.save(path)
        rows = tmp_path / "rows.csv"
        rows.write_text("a,b,c,d\n" + "".join(f"{i},{i + 1},{i + 2},{i + 3}\n" for i in range(50)))
        x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
        y = (x.sum(axis=1, keepdims=True) > 0).astype(np.float32)
        before = await _scrape(port)

        def work() -> None:
            with tt.Client(application.address) as client:
                client.upload("metered-jobs", path)
                job = client.submit_job("metered-jobs", rows)
                assert [s.state for s in client.watch_job(job.id)][-1] == tt.v1.jobs_service_pb2.JOB_STATE_SUCCEEDED
                client.train("metered-jobs", [(x, y)], micro_batch_size=16)

        await asyncio.to_thread(work)
        after = await _scrape(port)
    finally:
        await application.stop(grace=1.0)

    def moved(series: str) -> float:
        return _value(after, series) - _value(before, series)

    v1 = {"model": "metered-jobs", "version": "1"}
    parsed_before, parsed_after = parse(before), parse(after)

    def delta(name: str, **labels: str) -> float:
        return parsed_after.value(name, **v1, **labels) - parsed_before.value(name, **v1, **labels)

    assert delta("tt_jobs_finished_total", state="SUCCEEDED") == 1
    assert delta("tt_job_rows_total") == 50
    assert delta("tt_job_attempts_total") == 1
    assert parsed_after.value("tt_jobs_running", **v1) == 0
    assert delta("tt_job_lease_expiries_total") == 0
    assert parsed_after.has("tt_broker_queue_messages", queue="jobs")
    assert parsed_after.has("tt_broker_queue_messages", queue="dead_letter")
    # The session trained from version 1 (its checkpoint is version 2).
    assert delta("tt_training_steps_total") == 4
    assert delta("tt_training_examples_total") == 64
    assert delta("tt_training_sessions_ended_total", outcome="ok") == 1
    assert parsed_after.value("tt_training_sessions", **v1) == 0
    assert not parsed_after.has("tt_training_loss", **v1)  # a finished session's loss is not left behind
