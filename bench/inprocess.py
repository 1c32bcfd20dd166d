"""The compute ceiling: the server's own compiled serving function, called in this process, no RPC.

The servable is built the way the server builds it (``runtime.loader.Loader`` on a registry-inspected
version record), so the number is what the batcher's model call can do at best. A plain ``tf.function``
of ``model(x, training=False)`` is measured next to it as a cross-check.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench import workload


@dataclass(frozen=True, slots=True)
class ComputeResult:
    function: str  # "servable.run" or "tf.function"
    rows_per_call: int
    calls: int
    seconds: float
    rows_per_s: float
    us_per_call: float
    max_abs_diff: float  # vs the plain Keras call


def configure_threads() -> None:
    """Same TensorFlow thread pools as the server (default settings); must run before TensorFlow does anything."""
    from tt_server.config import Settings
    from tt_server.runtime.servable import configure_threads as apply

    fields = Settings.model_fields
    apply(fields["inference_intra_op_threads"].default, fields["inference_inter_op_threads"].default)


def load_servable(path: Path, work_dir: Path) -> Any:
    from tt_server.config import Settings
    from tt_server.formats.artifacts import ArchiveLimits
    from tt_server.formats.inspect import inspect_artifact
    from tt_server.runtime.loader import Loader
    from tt_server.types import ModelFormat, ModelVersion, VersionSource

    limits = ArchiveLimits.from_settings(Settings())
    work_dir.mkdir(parents=True, exist_ok=True)
    signature = inspect_artifact(path, ModelFormat.KERAS, work_dir, limits, frozenset())
    version = ModelVersion(
        model_name=workload.MODEL_NAME,
        version=1,
        format=ModelFormat.KERAS,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        size_bytes=path.stat().st_size,
        blob_key="",
        signature=signature,
        source=VersionSource.UPLOAD,
        created_at=datetime.now(UTC),
    )
    return Loader(version, path, work_dir, limits).load()


def measure(model: Any, servable: Any, batch_sizes: tuple[int, ...], seconds: float) -> list[ComputeResult]:
    import tensorflow as tf

    input_name = servable.signature.inputs[0].name
    (output_name,) = (spec.name for spec in servable.signature.outputs)
    plain = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, workload.FEATURES], tf.float32)],
        autograph=False,
    )
    results = []
    for rows in batch_sizes:
        x = workload.random_rows(rows, seed=rows)
        expected = workload.keras_output(model, x)

        def servable_call(x: np.ndarray = x) -> np.ndarray:
            return servable.run({input_name: x})[output_name]

        def plain_call(x: np.ndarray = x) -> np.ndarray:
            return plain(tf.constant(x)).numpy()

        for name, call in (("servable.run", servable_call), ("tf.function", plain_call)):
            diff = float(np.max(np.abs(call() - expected)))  # also warms up this batch size
            calls, elapsed = _timed(call, seconds)
            results.append(
                ComputeResult(name, rows, calls, elapsed, calls * rows / elapsed, elapsed / calls * 1e6, diff)
            )
    return results


def _timed(call: Any, seconds: float) -> tuple[int, float]:
    calls = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        call()
        calls += 1
    return calls, elapsed
