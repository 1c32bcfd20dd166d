"""Online-learning benchmark: Train throughput and latency over gRPC, and what training costs Predict.

    .venv/bin/python -m bench.train [--messages 400] [--micro-batch 32 256] [--predict-seconds 5]

Starts ``tt-server`` (embedded backends) in a child process, uploads the TFaaS MLP twice (one copy to train,
one to serve), and measures, printing one JSON object:

* ``train[micro_batch]``: examples/s of one Train stream sending 256-example messages as fast as flow
  control lets it, and each message's round trip (written -> its last progress event received), p50/p99,
  both under that load and one message at a time (``idle_rtt_ms``);
* ``predict``: p50/p99 of Predict (1 row, closed loop, one caller) on the *other* model, alone and while a
  Train stream runs at full speed.

Client and server share the machine's cores, as they would in a test rig; the numbers are comparative.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import (
    inference_service_pb2_grpc,
    model_pb2,
    registry_service_pb2,
    registry_service_pb2_grpc,
    tensor_pb2,
)

from bench import cpu

FEATURES = 42
HIDDEN = (128, 128, 128, 64, 64)
MESSAGE_ROWS = 256
F32 = tensor_pb2.DATA_TYPE_FLOAT32


# --- set-up -----------------------------------------------------------------------------------------------
def build_mlp(path: Path, seed: int) -> None:
    """The TFaaS MLP, compiled (binary cross-entropy, Adam) so Train takes its recipe from the file."""
    import keras

    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input(shape=(FEATURES,), name="features")
    for units in HIDDEN:
        x = keras.layers.Dense(units, activation="relu")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    model = keras.Model(inputs, outputs, name="tfaas")
    model.compile(loss="binary_crossentropy", optimizer="adam")
    model.save(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data_dir: Path, settings: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TT_")}  # embedded backends only
    env.update(TT_GRPC_ADDRESS=address, TT_DATA_DIR=str(data_dir), TT_LOG_LEVEL="WARNING", TF_CPP_MIN_LOG_LEVEL="2")
    env.update(settings)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tt_server"], stderr=log, env=env)
    return proc, address


async def wait_serving(address: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180.0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start")
            await asyncio.sleep(0.2)


async def upload(stub: registry_service_pb2_grpc.ModelRegistryServiceStub, name: str, path: Path) -> None:
    data = path.read_bytes()  # noqa: ASYNC240 - a small file, read once at set-up

    async def requests() -> AsyncIterator[registry_service_pb2.UploadModelVersionRequest]:
        yield registry_service_pb2.UploadModelVersionRequest(header=registry_service_pb2.UploadHeader(model_name=name))
        for i in range(0, len(data), 1 << 20):
            yield registry_service_pb2.UploadModelVersionRequest(chunk=data[i : i + (1 << 20)])

    await stub.UploadModelVersion(requests())


def tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(dtype=F32, shape=array.shape, content=array.tobytes())


def example_messages(count: int, seed: int = 0) -> list[pb.TrainRequest]:
    """Pre-encoded 256-example messages labelled by a fixed random linear rule (so the loss falls)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(FEATURES, 1)).astype(np.float32)
    messages = []
    for _ in range(count):
        x = rng.normal(size=(MESSAGE_ROWS, FEATURES)).astype(np.float32)
        y = (x @ w > 0).astype(np.float32)
        messages.append(
            pb.TrainRequest(
                examples=pb.TrainExamples(features={"features": tensor(x)}, labels={"probability": tensor(y)})
            )
        )
    return messages


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ms = np.asarray(samples) * 1e3
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3)}


# --- measurements -------------------------------------------------------------------------------------------
def train_config(name: str, micro_batch: int) -> pb.TrainRequest:
    # No checkpoints: the benchmark measures the training path, not publishing.
    return pb.TrainRequest(
        config=pb.TrainConfig(
            model=model_pb2.ModelRef(name=name),
            micro_batch_size=micro_batch,
            checkpoint=pb.CheckpointPolicy(on_end=False),
            on_abort=pb.ON_ABORT_DISCARD,
        )
    )


async def train_stream(
    stub: inference_service_pb2_grpc.InferenceServiceStub,
    name: str,
    messages: list[pb.TrainRequest],
    micro_batch: int,
    pipelined: bool,
    stop: asyncio.Event | None = None,
    rate: float = 0.0,
) -> dict[str, object]:
    """One Train stream over ``messages`` (cycled until ``stop`` when given). Pipelined: write as fast as flow
    control allows, or ``rate`` examples/s; else write one message and wait for its last progress event."""
    call = stub.Train()
    await call.write(train_config(name, micro_batch))
    started = await call.read()
    assert started.WhichOneof("event") == "started", started
    sent_at: list[float] = []  # per message, when it was written
    done_at: list[float] = []  # per message, when its last example's progress arrived
    examples_done = 0
    message_done = asyncio.Event()

    async def reader() -> None:
        nonlocal examples_done
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            if response.WhichOneof("event") == "progress":
                examples_done = response.progress.examples_seen
                now = time.perf_counter()
                while len(done_at) < len(sent_at) and examples_done >= (len(done_at) + 1) * MESSAGE_ROWS:
                    done_at.append(now)
                    message_done.set()

    read_task = asyncio.ensure_future(reader())
    begin = time.perf_counter()
    i = 0
    while (stop is None and i < len(messages)) or (stop is not None and not stop.is_set()):
        if rate:
            await asyncio.sleep(max(0.0, begin + i * MESSAGE_ROWS / rate - time.perf_counter()))
        sent_at.append(time.perf_counter())
        await call.write(messages[i % len(messages)])
        i += 1
        if not pipelined:
            while len(done_at) < len(sent_at):
                message_done.clear()
                await message_done.wait()
    await call.write(pb.TrainRequest(control=pb.TRAIN_CONTROL_END))
    await call.done_writing()
    await read_task
    elapsed = done_at[-1] - begin
    rtts = [d - s for s, d in zip(sent_at, done_at, strict=False)]
    return {
        "examples": examples_done,
        "seconds": round(elapsed, 3),
        "examples_per_second": round(examples_done / elapsed),
        "rtt_ms": percentiles(rtts),
    }


async def predict_loop(
    stub: inference_service_pb2_grpc.InferenceServiceStub, name: str, seconds: float
) -> dict[str, Any]:
    x = np.random.default_rng(1).normal(size=(1, FEATURES)).astype(np.float32)
    request = pb.PredictRequest(model=model_pb2.ModelRef(name=name), inputs={"features": tensor(x)})
    for _ in range(200):  # warm: load, trace paths, connection
        await stub.Predict(request)
    latencies = []
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        await stub.Predict(request)
        latencies.append(time.perf_counter() - start)
    return {"calls": len(latencies), **percentiles(latencies), "mean": round(statistics.fmean(latencies) * 1e3, 3)}


async def stream_elsewhere(address: str, name: str, micro_batch: int, seconds: float) -> dict[str, object]:
    """A full-speed Train stream for ``seconds`` from a client process of its own: in this process its writes
    and reads would share the event loop with the Predict caller, whose latency would then be partly the
    client's own (the Predict p99 under training measured the benchmark's client as much as the server)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.train",
        "--stream-for",
        str(seconds),
        "--address",
        address,
        "--model",
        name,
        "--micro-batch",
        str(micro_batch),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the Train stream's client failed ({child.returncode})")
    result: dict[str, object] = json.loads(out)
    return result


async def _stream_for(address: str, name: str, micro_batch: int, seconds: float) -> dict[str, object]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        return await train_stream(stub, name, example_messages(100), micro_batch, True, stop)


async def wait_idle(pid: int, limit_s: float = 15.0) -> float:
    """Wait until the server's process tree uses under 5% of a core over 0.5 s (at most ``limit_s``)."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        before = cpu.tree_cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if cpu.tree_cpu_seconds(pid) - before < 0.025:
            break
    return round(time.monotonic() - start, 1)


async def main(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="tt-bench-train-"))
    build_mlp(work / "train.keras", seed=1)
    build_mlp(work / "serve.keras", seed=2)
    settings = dict(item.split("=", 1) for item in args.setting)
    proc, address = start_server(work / "server", settings)
    try:
        await wait_serving(address, proc)
        async with grpc.aio.insecure_channel(address) as channel:
            registry = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
            inference = inference_service_pb2_grpc.InferenceServiceStub(channel)
            await upload(registry, "tfaas-train", work / "train.keras")
            await upload(registry, "tfaas-serve", work / "serve.keras")
            messages = example_messages(args.messages)
            results: dict[str, object] = {"message_rows": MESSAGE_ROWS, "cpus": os.cpu_count()}
            train: dict[str, object] = {}
            for micro_batch in args.micro_batch:
                await train_stream(inference, "tfaas-train", messages[:20], micro_batch, True)  # warm-up
                loaded = await train_stream(inference, "tfaas-train", messages, micro_batch, True)
                idle = await train_stream(inference, "tfaas-train", messages[: args.idle_messages], micro_batch, False)
                paced = await train_stream(
                    inference, "tfaas-train", messages[: args.idle_messages * 2], micro_batch, True, rate=args.rate
                )
                train[str(micro_batch)] = {
                    **loaded,
                    "idle_rtt_ms": idle["rtt_ms"],
                    f"rtt_ms_at_{args.rate:.0f}_per_second": paced["rtt_ms"],
                }
            results["train"] = train

            # Alone / under a full-speed Train stream, in pairs: every pair is reported (the p99 moves a lot on a
            # shared machine; the worst pair counts).
            pairs = []
            for _ in range(args.runs):
                # The "alone" runs once measured worse than the runs under training: the previous Train stream's
                # tail (its last steps and checkpoint in the training process) overlapped them. Start only once
                # the server's processes are idle again, and record what they used meanwhile.
                settled = await wait_idle(proc.pid)
                before = cpu.tree_cpu_seconds(proc.pid)
                alone = await predict_loop(inference, "tfaas-serve", args.predict_seconds)
                alone["server_cpu_us_per_call"] = round(
                    (cpu.tree_cpu_seconds(proc.pid) - before) / alone["calls"] * 1e6
                )
                alone["waited_for_idle_s"] = settled
                stop = asyncio.Event()
                if args.same_process_stream:
                    training = asyncio.ensure_future(
                        train_stream(inference, "tfaas-train", messages, args.micro_batch[0], True, stop)
                    )
                else:
                    training = asyncio.ensure_future(
                        stream_elsewhere(address, "tfaas-train", args.micro_batch[0], args.predict_seconds + 4)
                    )
                await asyncio.sleep(2.5)  # the stream is at full speed (its client process has started)
                before = cpu.tree_cpu_seconds(proc.pid)
                during = await predict_loop(inference, "tfaas-serve", args.predict_seconds)
                during["server_cpu_us_per_call"] = round(
                    (cpu.tree_cpu_seconds(proc.pid) - before) / during["calls"] * 1e6
                )
                stop.set()
                background = await training
                pairs.append(
                    {
                        "alone": alone,
                        "while_training_full_speed": during,
                        "p99_ratio": round(during["p99"] / alone["p99"], 2),
                        "training_examples_per_second_meanwhile": background["examples_per_second"],
                    }
                )
            stop = asyncio.Event()
            training = asyncio.ensure_future(
                train_stream(inference, "tfaas-train", messages, args.micro_batch[0], True, stop, rate=args.rate)
            )
            await asyncio.sleep(1.0)
            during_paced = await predict_loop(inference, "tfaas-serve", args.predict_seconds)
            stop.set()
            await training
            results["predict_ms"] = {
                "runs": pairs,
                "worst_p99_ratio": max(p["p99_ratio"] for p in pairs),
                f"while_training_at_{args.rate:.0f}_per_second": during_paced,
            }
            return results
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def run_default() -> dict[str, object]:
    """The benchmark with its default arguments (``make bench`` runs it inside ``python -m bench``)."""
    return asyncio.run(main(_parser().parse_args([])))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=400, help="256-example messages per throughput run")
    parser.add_argument("--idle-messages", type=int, default=100, help="messages of the one-at-a-time run")
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[32, 256], help="micro-batch sizes to run")
    parser.add_argument("--predict-seconds", type=float, default=5.0, help="length of each Predict run")
    parser.add_argument("--rate", type=float, default=20_000, help="examples/s of the paced runs")
    parser.add_argument("--runs", type=int, default=3, help="Predict alone / under training pairs")
    parser.add_argument(
        "--setting", action="append", default=[], help="server setting, e.g. TT_TRAINING_THREAD_NICE=10"
    )
    parser.add_argument(
        "--same-process-stream",
        action="store_true",
        help="run the background Train stream in this process (as before: its client work shares the Predict "
        "caller's event loop)",
    )
    # The background stream's client process (stream_elsewhere):
    parser.add_argument("--stream-for", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--address", default="", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="", help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    arguments = _parser().parse_args()
    if arguments.stream_for:
        streamed = _stream_for(arguments.address, arguments.model, arguments.micro_batch[0], arguments.stream_for)
        print(json.dumps(asyncio.run(streamed)))
    else:
        print(json.dumps(asyncio.run(main(arguments)), indent=2))
