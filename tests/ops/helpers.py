"""Helpers for the operations tests: calls that report their status code and how long they took."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tensortrigger.v1 import inference_service_pb2 as ipb
from tensortrigger.v1 import inference_service_pb2_grpc, model_pb2, tensor_pb2

from tests.runtime.helpers import constant_model


def constant_artifacts(folder: Path, *values: float) -> list[Path]:
    """Keras files of the MLP's signature answering ``value`` for every row (versions recognisable by output)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for value in values:
        path = folder / f"constant-{value}.keras"
        constant_model(value).save(path)
        paths.append(path)
    return paths


async def score(
    stub: inference_service_pb2_grpc.InferenceServiceStub,
    ref: model_pb2.ModelRef,
    deadline: float | None = 10.0,
) -> tuple[float, int]:
    """The served version's output for a row of ones, and which version ran."""
    x = np.ones((1, 4), np.float32)
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[1, 4], content=x.tobytes())
    response = await stub.Predict(ipb.PredictRequest(model=ref, inputs={"features": tensor}), timeout=deadline)
    return float(np.frombuffer(response.outputs["score"].content, "<f4")[0]), response.model_version


async def outcome(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, float]:
    """Await ``call``; its status code (OK if it returned), details and duration in seconds."""
    started = time.monotonic()
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or "", time.monotonic() - started
    return grpc.StatusCode.OK, "", time.monotonic() - started


async def until_ok(make_call: Callable[[], Awaitable[Any]], within: float, pause: float = 0.1) -> float:
    """Repeat a call until it succeeds; returns the seconds that took. Fails after ``within`` seconds."""
    started = time.monotonic()
    while True:
        code, details, _ = await outcome(make_call())
        if code == grpc.StatusCode.OK:
            return time.monotonic() - started
        assert code == grpc.StatusCode.UNAVAILABLE, f"{code}: {details}"
        assert time.monotonic() - started < within, f"still {code} after {within} s: {details}"
        await asyncio.sleep(pause)
