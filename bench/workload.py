"""The benchmark's model and payloads: the "TFaaS" MLP and its Predict messages, pre-encoded once.

Keras and TensorFlow are imported inside the functions that need them, so the echo server process (which
imports this module for the method path) starts without TensorFlow.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import model_pb2, tensor_pb2

MODEL_NAME = "tfaas"
FEATURES = 42
HIDDEN = (128, 128, 128, 64, 64)
SEED = 20240601
INPUT_NAME = "features"
OUTPUT_NAME = "probability"
SERVICE = "tensortrigger.v1.InferenceService"
PREDICT_PATH = f"/{SERVICE}/Predict"


def build_model(path: Path) -> Any:
    """Build the MLP with seeded random weights, save it as ``.keras`` at ``path`` and return it."""
    import keras

    keras.utils.set_random_seed(SEED)
    x = inputs = keras.Input(shape=(FEATURES,), name=INPUT_NAME)
    for units in HIDDEN:
        x = keras.layers.Dense(units, activation="relu")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_NAME)(x)
    model = keras.Model(inputs, outputs, name=MODEL_NAME)
    model.save(path)
    return model


def keras_output(model: Any, rows: np.ndarray) -> np.ndarray:
    """The reference answer: a plain Keras call (no tf.function, no server)."""
    return np.asarray(model(rows, training=False))


def random_rows(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, FEATURES), dtype=np.float32)


def tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    """Raw ``content`` encoding: the server's zero-copy path."""
    array = np.ascontiguousarray(array, dtype="<f4")
    return tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=list(array.shape), content=array.tobytes())


def from_tensor(message: tensor_pb2.Tensor) -> np.ndarray:
    if message.content:
        return np.frombuffer(message.content, dtype="<f4").reshape(tuple(message.shape))
    return np.asarray(message.float_val, dtype=np.float32).reshape(tuple(message.shape))


def predict_request(rows: np.ndarray, input_name: str = INPUT_NAME) -> pb.PredictRequest:
    return pb.PredictRequest(model=model_pb2.ModelRef(name=MODEL_NAME), inputs={input_name: tensor(rows)})


def batch_request(rows: np.ndarray, request_id: str, first: bool, input_name: str = INPUT_NAME) -> Any:
    request = pb.PredictBatchRequest(inputs={input_name: tensor(rows)}, request_id=request_id)
    if first:  # later chunks reuse the first chunk's (pinned) model resolution
        request.model.name = MODEL_NAME
    return request


def canned_response(output_name: str = OUTPUT_NAME, version: int = 1) -> pb.PredictResponse:
    """What the server answers to a one-row request, with a fixed value: the echo server's reply."""
    return pb.PredictResponse(
        model_name=MODEL_NAME, model_version=version, outputs={output_name: tensor(np.full((1, 1), 0.5, np.float32))}
    )


def grpc_frame(message: bytes) -> bytes:
    """gRPC length-prefixed message: compressed flag 0, then the 4-byte big-endian length."""
    return b"\x00" + struct.pack(">I", len(message)) + message
