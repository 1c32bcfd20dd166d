"""Wire fuzzing against a real server: every method of every service on the port (ours, TF Serving,
Open Inference Protocol, health, reflection) gets generated messages, mutated valid ones and random frames.

Asserts: only defined statuses (never UNKNOWN or INTERNAL), the server stays SERVING, no traceback in its log,
its RSS stays bounded (``MAX_RSS_GROWTH``: this process's, which hypothesis shares). CI runs ``TT_FUZZ_CASES``
(default 2,000) cases with a fresh seed each run, printed (set ``TT_FUZZ_SEED`` to replay one); ``make fuzz``
runs 100,000 and writes a JSON report (``TT_FUZZ_REPORT``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from tensorflow_serving.apis import predict_pb2
from tensortrigger.v1 import inference_service_pb2 as ipb
from tensortrigger.v1 import jobs_service_pb2 as jpb
from tensortrigger.v1 import model_pb2, tensor_pb2
from tensortrigger.v1 import registry_service_pb2 as rpb
from tensortrigger.v1.registry_service_pb2_grpc import ModelRegistryServiceStub
from tritonclient.grpc import service_pb2 as kpb

from tests import models
from tests.api.helpers import upload
from tests.fuzz.strategies import MODEL, Case, cases, methods
from tests.serving import server_settings
from tt_server import compat
from tt_server.api.reflection import v1_file_descriptor
from tt_server.app import SERVICE_NAMES, Application

CASES = int(os.environ.get("TT_FUZZ_CASES", "2000"))
CALL_TIMEOUT = 20.0
# Bytes RSS may grow after the first tenth of the cases. The server shares this process with hypothesis, whose
# bookkeeping of generated cases alone measured ~5 KiB per case (27k cases: +136 MiB, no server calls).
MAX_RSS_GROWTH = (256 << 20) + CASES * (8 << 10)
SERVICES = [
    *SERVICE_NAMES,
    *compat.SERVICE_NAMES,
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
]
FAILED = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


class _Tracebacks(logging.Handler):
    """Log records that carry a traceback, or are errors, from any thread of this process."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.found.append(f"{record.levelname} {record.name}: {record.getMessage()[:500]}")


@dataclass
class FuzzServer:
    address: str
    log: _Tracebacks
    artifact: bytes  # the MLP, uploaded again when a fuzzed Delete* removed it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    """A real server on loopback serving the small MLP as ``MODEL``, on an event loop in a thread of its own,
    so the fuzzing client can be plain and blocking (hypothesis drives synchronous tests)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    settings = server_settings(tmp / "data", max_upload_bytes=8 << 20, shutdown_grace_seconds=2.0)
    ready: queue.Queue[str | BaseException] = queue.Queue()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    artifact = models.mlp_keras(tmp)

    async def serve() -> None:
        app = Application(settings)
        try:
            await app.start()
            async with grpc.aio.insecure_channel(app.address) as ch:
                await upload(ModelRegistryServiceStub(ch), MODEL, artifact)
        except BaseException as e:
            ready.put(e)
            raise
        ready.put(app.address)
        try:
            await stop.wait()
        finally:
            await app.stop(grace=2.0)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="fuzz-server", daemon=True)
    thread.start()
    started = ready.get(timeout=300)
    if isinstance(started, BaseException):
        raise started
    handler = _Tracebacks()
    logging.getLogger().addHandler(handler)
    try:
        yield FuzzServer(started, handler, artifact.read_bytes())
    finally:
        logging.getLogger().removeHandler(handler)
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        loop.close()


def valid_messages() -> dict[str, list[bytes]]:
    """Well-formed requests for the served model, which mutations start from (so they reach past parsing)."""
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    ref = model_pb2.ModelRef(name=MODEL)
    features = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[2, 4], content=rows.tobytes())
    predict = ipb.PredictRequest(model=ref)
    predict.inputs["features"].CopyFrom(features)
    batch = ipb.PredictBatchRequest(model=ref)
    batch.inputs["features"].CopyFrom(features)
    examples = ipb.TrainExamples()
    examples.features["features"].CopyFrom(features)
    examples.labels["score"].CopyFrom(
        tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[2, 1], float_val=[0.0, 1.0])
    )
    tfs = predict_pb2.PredictRequest()
    tfs.model_spec.name = MODEL
    tfs.inputs["features"].dtype = 1  # DT_FLOAT
    tfs.inputs["features"].tensor_shape.dim.add(size=1)
    tfs.inputs["features"].tensor_shape.dim.add(size=4)
    tfs.inputs["features"].float_val.extend([1, 2, 3, 4])
    infer = kpb.ModelInferRequest(model_name=MODEL)
    tensor = infer.inputs.add(name="features", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1, 2, 3, 4])
    found = {
        "tensortrigger.v1.InferenceService.Predict": [predict],
        "tensortrigger.v1.InferenceService.PredictBatch": [batch],
        "tensortrigger.v1.InferenceService.Train": [
            ipb.TrainRequest(config=ipb.TrainConfig(model=ref, loss="mse")),
            ipb.TrainRequest(examples=examples),
        ],
        "tensortrigger.v1.ModelRegistryService.UploadModelVersion": [
            rpb.UploadModelVersionRequest(header=rpb.UploadHeader(model_name="fuzz-upload")),
            rpb.UploadModelVersionRequest(chunk=b"PK\x03\x04" + bytes(60)),
        ],
        "tensortrigger.v1.JobsService.CreateJob": [
            jpb.CreateJobRequest(spec=jpb.JobSpec(model=ref)),
            jpb.CreateJobRequest(chunk=b"a,b,c,d\n1,2,3,4\n"),
        ],
        "tensorflow.serving.PredictionService.Predict": [tfs],
        "inference.GRPCInferenceService.ModelInfer": [infer],
        "inference.GRPCInferenceService.ModelStreamInfer": [infer],
    }
    return {name: [m.SerializeToString() for m in messages] for name, messages in found.items()}


def call(channel: grpc.Channel, case: Case) -> tuple[grpc.StatusCode, str]:
    method, messages = case.method, case.messages
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(case.path)(iter(messages), timeout=CALL_TIMEOUT):
                pass
        elif method.client_streaming:
            channel.stream_unary(case.path)(iter(messages), timeout=CALL_TIMEOUT)
        elif method.server_streaming:
            for _ in channel.unary_stream(case.path)(messages[0], timeout=CALL_TIMEOUT):
                pass
        else:
            channel.unary_unary(case.path)(messages[0], timeout=CALL_TIMEOUT)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def restore(channel: grpc.Channel, artifact: bytes) -> None:
    upload_call = channel.stream_unary("/tensortrigger.v1.ModelRegistryService/UploadModelVersion")
    header = rpb.UploadModelVersionRequest(header=rpb.UploadHeader(model_name=MODEL))
    upload_call(iter([header.SerializeToString(), rpb.UploadModelVersionRequest(chunk=artifact).SerializeToString()]))


def rss_bytes() -> int:
    """This process's resident memory: the server's (the client's share is small and steady)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# The server runs in this process: its use of the random module while a case is drawn is not the strategy's.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_wire_fuzz(server: FuzzServer) -> None:
    address = server.address
    run_seed = int(os.environ.get("TT_FUZZ_SEED") or random.randrange(2**32))
    print(f"\nwire fuzz: {CASES} cases, seed {run_seed} (replay: TT_FUZZ_SEED={run_seed})")
    v1_file_descriptor()  # grpc.reflection.v1 into this process's descriptor pool
    # Health's Watch streams until the client leaves: it is fuzzed by its request type through Check.
    targets = [m for m in methods(SERVICES) if m.full_name != "grpc.health.v1.Health.Watch"]
    by_status: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    by_method: dict[str, Counter[str]] = defaultdict(Counter)
    failures: list[dict[str, object]] = []
    rss: dict[str, int] = {}
    done = 0
    started = time.monotonic()
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    health = health_pb2_grpc.HealthStub(channel)

    @seed(run_seed)
    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # bounded time; a failing case is reported with its exact bytes instead
        suppress_health_check=list(HealthCheck),
    )
    @given(cases(targets, valid_messages()))
    def one(case: Case) -> None:
        nonlocal done
        code, details = call(channel, case)
        done += 1
        by_status[code.name] += 1
        by_kind[case.kind] += 1
        by_method[case.method.full_name][code.name] += 1
        if code == grpc.StatusCode.OK and case.method.name in ("DeleteModel", "DeleteModelVersion"):
            restore(channel, server.artifact)  # keep fuzzing against a served model
        if code in FAILED and len(failures) < 50:
            failures.append(
                {
                    "method": case.path,
                    "code": code.name,
                    "details": details,
                    "messages": [m.hex() for m in case.messages],
                }
            )
        if done == max(1, CASES // 10):
            rss["warm"] = rss_bytes()
        if done % 10_000 == 0:  # long runs (make fuzz) show progress
            print(f"  {done} cases, {time.monotonic() - started:.0f} s, {dict(by_status.most_common())}", flush=True)
        if done % 250 == 0:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING, f"not SERVING after {done} cases"

    try:
        one()
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
    finally:
        channel.close()
    rss["end"] = rss_bytes()
    seconds = time.monotonic() - started
    found = server.log.found
    report = {
        "cases": done,
        "seed": run_seed,
        "seconds": round(seconds, 1),
        "cases_per_second": round(done / seconds, 1),
        "by_kind": dict(by_kind),
        "by_status": dict(by_status.most_common()),
        "by_method": {m: dict(c.most_common()) for m, c in sorted(by_method.items())},
        "rss_warm_mib": round(rss.get("warm", 0) / 2**20, 1),
        "rss_end_mib": round(rss["end"] / 2**20, 1),
        "serving_at_end": status == health_pb2.HealthCheckResponse.SERVING,
        "tracebacks_in_log": len(found),
        "failures": failures,
    }
    print(json.dumps({k: v for k, v in report.items() if k not in ("by_method", "failures")}))
    if os.environ.get("TT_FUZZ_REPORT"):
        Path(os.environ["TT_FUZZ_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")
    assert done >= CASES
    assert not failures, json.dumps(failures[:5], indent=1)
    assert report["serving_at_end"]
    assert not found, "\n".join(found[:5])
    assert rss["end"] - rss.get("warm", rss["end"]) < MAX_RSS_GROWTH, report
