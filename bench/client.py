"""Load and checks from Python: ``grpc.aio`` stubs, the way a Python service would call Tensor Trigger."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import numpy as np
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import inference_service_pb2_grpc

from bench import workload

T = TypeVar("T")
MAX_MESSAGE = 64 << 20
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # Without this, channels to the same target share one connection (the global subchannel pool).
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass(frozen=True, slots=True)
class ClientResult:
    connections: int
    in_flight: int
    seconds: float
    requests: int  # completed in the measured window
    req_per_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)  # status code name -> count, whole run


@dataclass(frozen=True, slots=True)
class RowsResult:
    mode: str  # "PredictBatch stream" or "Predict unary"
    rows_per_message: int
    in_flight: int
    messages: int
    seconds: float
    rows_per_s: float
    max_abs_diff: float  # first answer vs the Keras reference


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """uvloop when installed (as the server does): the client's own overhead then hides the server less."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _channels(address: str, count: int) -> list[grpc.aio.Channel]:
    return [grpc.aio.insecure_channel(address, options=_OPTIONS) for _ in range(count)]


async def _close(channels: list[grpc.aio.Channel]) -> None:
    await asyncio.gather(*(channel.close() for channel in channels))


def unary_load(
    address: str, request: pb.PredictRequest, connections: int, in_flight: int, seconds: float, warm_up: float = 1.0
) -> ClientResult:
    """``in_flight`` concurrent Predict loops over ``connections`` channels for ``warm_up + seconds``; only
    calls that start after the warm-up are timed."""
    return _run(_unary_load(address, request, connections, in_flight, seconds, warm_up))


async def _unary_load(
    address: str, request: pb.PredictRequest, connections: int, in_flight: int, seconds: float, warm_up: float
) -> ClientResult:
    channels = _channels(address, connections)
    stubs = [inference_service_pb2_grpc.InferenceServiceStub(channel) for channel in channels]
    errors: Counter[str] = Counter()
    latencies: list[float] = []  # calls that ran entirely inside the measured window
    completed = 0  # calls that ended inside it: the throughput
    start = time.perf_counter()
    measure_from, stop_at = start + warm_up, start + warm_up + seconds

    async def loop(stub: inference_service_pb2_grpc.InferenceServiceStub) -> None:
        nonlocal completed
        while (began := time.perf_counter()) < stop_at:
            try:
                await stub.Predict(request, timeout=30.0)
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] += 1
                continue
            ended = time.perf_counter()
            if measure_from <= ended <= stop_at:
                completed += 1
                if began >= measure_from:
                    latencies.append(ended - began)

    try:
        await asyncio.gather(*(loop(stubs[i % connections]) for i in range(in_flight)))
    finally:
        await _close(channels)
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3 if latencies else (float("nan"), float("nan"))
    return ClientResult(
        connections=connections,
        in_flight=in_flight,
        seconds=seconds,
        requests=completed,
        req_per_s=completed / seconds,
        p50_ms=float(p50),
        p99_ms=float(p99),
        errors=dict(errors),
    )


def predict(address: str, rows: np.ndarray, input_name: str) -> pb.PredictResponse:
    """One Predict call (raises ``grpc.RpcError`` on a non-OK status)."""
    with grpc.insecure_channel(address, options=_OPTIONS) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        return stub.Predict(workload.predict_request(rows, input_name), timeout=60.0)


def only_output(response: pb.PredictResponse | pb.PredictBatchResponse) -> np.ndarray:
    (tensor,) = response.outputs.values()
    return workload.from_tensor(tensor)


def large_predict(
    address: str, rows: np.ndarray, expected: np.ndarray, input_name: str, in_flight: int, seconds: float
) -> RowsResult:
    """Unary Predict with ``len(rows)`` rows per call, ``in_flight`` calls at a time, for ``seconds``."""
    return _run(_large_predict(address, rows, expected, input_name, in_flight, seconds))


async def _large_predict(
    address: str, rows: np.ndarray, expected: np.ndarray, input_name: str, in_flight: int, seconds: float
) -> RowsResult:
    (channel,) = _channels(address, 1)
    stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
    request = workload.predict_request(rows, input_name)
    diff = float(np.max(np.abs(only_output(await stub.Predict(request, timeout=60.0)) - expected)))
    calls = 0
    start = time.perf_counter()

    async def loop() -> None:
        nonlocal calls
        while time.perf_counter() - start < seconds:
            await stub.Predict(request, timeout=60.0)
            calls += 1

    try:
        await asyncio.gather(*(loop() for _ in range(in_flight)))
    finally:
        await channel.close()
    elapsed = time.perf_counter() - start
    return RowsResult("Predict unary", len(rows), in_flight, calls, elapsed, calls * len(rows) / elapsed, diff)


def predict_batch(address: str, rows: np.ndarray, expected: np.ndarray, input_name: str, seconds: float) -> RowsResult:
    """One PredictBatch stream sending ``rows`` as every chunk for about ``seconds`` (at least 3 chunks);
    rows/s from the first send to the last answer."""
    return _run(_predict_batch(address, rows, expected, input_name, seconds))


async def _predict_batch(
    address: str, rows: np.ndarray, expected: np.ndarray, input_name: str, seconds: float
) -> RowsResult:
    (channel,) = _channels(address, 1)
    stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
    first = workload.batch_request(rows, "0", first=True, input_name=input_name)
    later = workload.batch_request(rows, "n", first=False, input_name=input_name)  # one message, sent repeatedly
    sent = 0
    start = time.perf_counter()

    async def chunks() -> AsyncIterator[pb.PredictBatchRequest]:
        nonlocal sent
        while sent < 3 or time.perf_counter() - start < seconds:
            yield first if sent == 0 else later
            sent += 1

    answered = 0
    diff = float("nan")
    try:
        async for response in stub.PredictBatch(chunks(), timeout=seconds + 120.0):
            if answered == 0:
                diff = float(np.max(np.abs(only_output(response) - expected)))
            answered += 1
    finally:
        await channel.close()
    elapsed = time.perf_counter() - start
    if answered != sent:
        raise RuntimeError(f"PredictBatch answered {answered} of {sent} chunks")
    return RowsResult("PredictBatch stream", len(rows), 1, answered, elapsed, answered * len(rows) / elapsed, diff)
