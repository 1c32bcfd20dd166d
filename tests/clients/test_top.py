"""``tt top`` in a real terminal (tmux) against a real server under load: the screen shows the model's version as
loaded with a request rate, latency percentiles, rows per call and errors, and keeps refreshing."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import uuid

import grpc
import numpy as np
import pytest
from tensortrigger._cli.top import Scrape, View, parse_metrics, quantile
from tensortrigger.v1 import (
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_pb2,
    registry_service_pb2_grpc,
    tensor_pb2,
)

from tests import models
from tests.api.helpers import upload
from tests.api.scrape import free_port
from tests.services import service_missing
from tests.serving import server_settings
from tt_server.app import Application


def test_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.99, {0.1: 0.0, float("inf"): 10.0}) == pytest.approx(0.1)  # in +Inf: the last bound
    assert quantile(0.5, {0.1: 0.0}) is None


def test_view_rates_between_two_scrapes() -> None:
    def scrape(at: float, ok: float, failed: float, calls: float, rows: float) -> Scrape:
        text = (
            f'tt_model_requests_total{{model="m",status="OK",version="2"}} {ok}\n'
            f'tt_model_requests_total{{model="m",status="INTERNAL",version="2"}} {failed}\n'
            f'tt_model_loaded{{model="m",version="2"}} 1\n'
            f'tt_batch_rows_count{{model="m",version="2"}} {calls}\n'
            f'tt_batch_rows_sum{{model="m",version="2"}} {rows}\n'
            'tt_model_requests_total{model="_other",status="NOT_FOUND",version=""} 3\n'
        )
        return Scrape(at, parse_metrics(text))

    view = View()
    view.update(scrape(10.0, 100, 1, 10, 400))
    assert [(r.model, r.version, r.loaded, r.rps) for r in view.rows] == [
        ("_other", "", False, None),
        ("m", "2", True, None),
    ]
    view.update(scrape(12.0, 180, 3, 20, 1200))
    m = next(r for r in view.rows if r.model == "m")
    assert m.rps == pytest.approx(41.0) and m.errors == pytest.approx(1.0) and m.rows_per_call == pytest.approx(80.0)


def _tmux() -> str:
    tmux = shutil.which("tmux")
    if tmux is None:
        service_missing("tmux is not installed; install it with: make tools")
    return tmux


async def _run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_tt_top_in_a_terminal_under_load(tmp_path) -> None:
    tmux = _tmux()
    port = free_port()
    application = Application(server_settings(tmp_path, metrics_address=f"127.0.0.1:{port}"))
    await application.start()
    session = f"tt-top-{uuid.uuid4().hex[:8]}"
    name = f"topped-{uuid.uuid4().hex[:6]}"
    stop = asyncio.Event()
    try:
        async with grpc.aio.insecure_channel(application.address) as ch:
            await upload(registry_service_pb2_grpc.ModelRegistryServiceStub(ch), name, models.mlp_keras(tmp_path))
            stub = inference_service_pb2_grpc.InferenceServiceStub(ch)
            x = np.ones((4, 4), np.float32)
            tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[4, 4], content=x.tobytes())
            good = inference_service_pb2.PredictRequest(
                model=model_pb2.ModelRef(name=name), inputs={"features": tensor}
            )
            bad = inference_service_pb2.PredictRequest(model=model_pb2.ModelRef(name=name, version=7))
            await stub.Predict(good)

            async def load() -> None:
                while not stop.is_set():
                    await asyncio.gather(*(stub.Predict(good) for _ in range(4)))
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await stub.Predict(bad)  # NOT_FOUND: a version that does not exist
                    await asyncio.sleep(0.01)

            loader = asyncio.create_task(load())
            command = (  # the terminal's own size, not one pytest's environment may carry
                f"env -u COLUMNS -u LINES {sys.executable} -m tensortrigger._cli --address {application.address} top "
                f"--metrics http://127.0.0.1:{port}/metrics --interval 1"
            )
            await _run(tmux, "new-session", "-d", "-s", session, "-x", "150", "-y", "30", command)
            screen = ""
            for _ in range(60):  # the first frame has no rates yet; a later one must
                await asyncio.sleep(0.5)
                screen = await _run(tmux, "capture-pane", "-p", "-t", session)
                row = _row(screen, name, "1")
                if row is not None and row[2] != "-":
                    break
            stop.set()
            await loader
    finally:
        stop.set()
        with contextlib.suppress(AssertionError):
            await _run(tmux, "kill-session", "-t", session)
        await application.stop(grace=1.0)
    print(screen)  # the capture, for the record (pytest -s)
    assert "tt top" in screen and "SERVING" in screen
    assert "MODEL" in screen and "P99 ms" in screen and "ROWS/CALL" in screen
    row = _row(screen, name, "1")
    assert row is not None, screen
    state, rps, _errors, p50, p99, rows_per_call = row[1], *map(_float, row[2:7])
    assert state == "loaded"
    assert rps > 0 and 0 < p50 <= p99 and rows_per_call >= 4
    unresolved = _row(screen, name, "-")  # the NOT_FOUND requests, counted for the model with no version
    assert unresolved is not None and unresolved[1] == "unresolved" and _float(unresolved[3]) > 0, screen


def _row(screen: str, model: str, version: str) -> list[str] | None:
    """The cells after MODEL of the table row of (model, version): [version, state, req/s, err/s, p50, p99, ...]."""
    for line in screen.splitlines():
        cells = line.split()  # the table's columns are separated by spaces; model names have none
        if len(cells) >= 8 and cells[0] == model and cells[1] == version:
            return cells[1:]
    return None


def _float(cell: str) -> float:
    return float(cell.replace(",", ""))
