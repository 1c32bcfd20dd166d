"""Models, data and stream helpers for the Train tests.

The learnable task: a fixed random "teacher" network labels Gaussian points; a small student MLP learns it
online. The teacher is a two-layer ReLU network, so the task is not linear, yet a few thousand examples take
the student from chance to well above it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import keras
import numpy as np
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import model_pb2, registry_service_pb2, tensor_pb2

F32 = tensor_pb2.DATA_TYPE_FLOAT32
FEATURES = 8


class Teacher:
    """Labels points with a fixed random two-layer network, balanced around its median."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(size=(FEATURES, 16)).astype(np.float32)
        self.w2 = rng.normal(size=(16, 1)).astype(np.float32)
        probe = rng.normal(size=(4096, FEATURES)).astype(np.float32)
        self.bias = -float(np.median(self._raw(probe)))

    def _raw(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ self.w1, 0) @ self.w2

    def data(self, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.random.default_rng(seed).normal(size=(rows, FEATURES)).astype(np.float32)
        y = (self._raw(x) + self.bias > 0).astype(np.float32)
        return x, y


def student(compiled: bool = True, seed: int = 3) -> keras.Model:
    """Input "features" (8,) -> Dense 32 relu -> Dense 1 sigmoid "score"; compiled with binary cross-entropy
    and Adam(0.01) unless ``compiled`` is false."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(FEATURES,), name="features")
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(hidden)
    model = keras.Model(inputs, score, name="student")
    if compiled:
        model.compile(loss="binary_crossentropy", optimizer=keras.optimizers.Adam(0.01))
    return model


def save(model: keras.Model, path: Path) -> Path:
    model.save(path)
    return path


# --- messages ---------------------------------------------------------------------------------------------
def tensor(array: np.ndarray, dtype: int = F32) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(dtype=dtype, shape=array.shape, content=np.ascontiguousarray(array).tobytes())


def config(name: str, **fields: object) -> pb.TrainRequest:
    label = fields.pop("label", None)
    version = fields.pop("version", None)
    ref = model_pb2.ModelRef(name=name)
    if label is not None:
        ref.label = str(label)
    if version is not None:
        ref.version = int(version)  # type: ignore[call-overload]
    return pb.TrainRequest(config=pb.TrainConfig(model=ref, **fields))  # type: ignore[arg-type]


def examples(x: np.ndarray, y: np.ndarray, evaluate_only: bool = False, key: str = "score") -> pb.TrainRequest:
    return pb.TrainRequest(
        examples=pb.TrainExamples(
            features={"features": tensor(x)}, labels={key: tensor(y)}, evaluate_only=evaluate_only
        )
    )


def chunks(x: np.ndarray, y: np.ndarray, size: int) -> Iterator[pb.TrainRequest]:
    for start in range(0, len(x), size):
        yield examples(x[start : start + size], y[start : start + size])


def control(action: int) -> pb.TrainRequest:
    return pb.TrainRequest(control=action)  # type: ignore[arg-type]


async def run(stub, requests: Sequence[pb.TrainRequest]) -> list[pb.TrainResponse]:
    """Send every request, half-close, and collect the responses (raises the stream's error)."""

    async def send():
        for request in requests:
            yield request

    return [r async for r in stub.Train(send())]


async def run_until_error(
    stub, requests: Sequence[pb.TrainRequest]
) -> tuple[list[pb.TrainResponse], grpc.aio.AioRpcError]:
    responses: list[pb.TrainResponse] = []
    call = stub.Train()
    try:
        for request in requests:
            await call.write(request)
        await call.done_writing()
        async for response in call:
            responses.append(response)
    except grpc.aio.AioRpcError as e:
        return responses, e
    raise AssertionError(f"the stream ended without an error after {len(responses)} responses")


async def drain(call) -> list[pb.TrainResponse]:
    """The rest of a call's responses, for calls already read with ``read()`` (gRPC forbids mixing that with
    iteration)."""
    responses = []
    while (response := await call.read()) is not grpc.aio.EOF:
        responses.append(response)
    return responses


def of(responses: Sequence[pb.TrainResponse], kind: str) -> list:
    return [getattr(r, kind) for r in responses if r.WhichOneof("event") == kind]


async def versions(registry_stub, name: str) -> list[model_pb2.ModelVersion]:
    response = await registry_stub.ListModelVersions(registry_service_pb2.ListModelVersionsRequest(name=name))
    return sorted(response.versions, key=lambda v: v.version)


async def accuracy(inference_stub, ref: model_pb2.ModelRef, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """Accuracy of the served version ``ref`` names on (x, y), evaluated through Predict; and that version."""
    response = await inference_stub.Predict(pb.PredictRequest(model=ref, inputs={"features": tensor(x)}))
    out = response.outputs["score"]
    scores = np.frombuffer(out.content, "<f4").reshape(tuple(out.shape))
    return float(np.mean((scores > 0.5) == (y > 0.5))), response.model_version
