"""Servable: one loaded model version, ready to run (TF Serving's word for what clients call).

A servable owns a *serving function*: the model's forward pass traced once into a TensorFlow graph by a
``tf.function`` with an explicit ``input_signature`` (batch dim ``None``), taking the signature's inputs
positionally and returning its outputs as a tuple in signature order. It is called through the traced
function's flat entry point (``inference_fn.call_flat``) rather than ``ConcreteFunction.__call__``, which
re-binds and re-validates the argument structure on every call: on the TFaaS MLP that halves the per-call
overhead (about 100 -> 50 us at batch 1) for the same graph and the same results. ``model.predict`` (a
``tf.data`` pipeline per call, milliseconds) is never used.

XLA (``jit_compile=True``) was measured and not kept: it saves ~10 us per call below ~16 rows, but XLA
compiles once per distinct batch size (~75 ms each on the MLP), so dynamic batches would have to be padded to
a few fixed sizes, and padding costs more than XLA saves from 32 rows up (measured, TFaaS MLP, 2 cores).

Thread safety: ``run`` may be called from any thread, also concurrently (the batcher calls it from the one
inference thread). ``unload`` may be called at any time: a call already running finishes on the objects
it holds; later calls raise ``Unavailable``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tt_server.errors import FailedPrecondition, InvalidArgument, Unavailable
from tt_server.formats.dtypes import NUMPY_DTYPES
from tt_server.runtime.devices import init_devices, short_device
from tt_server.types import DType, Signature, TensorSpec

log = logging.getLogger(__name__)

TF_DTYPES: dict[DType, tf.DType] = {d: tf.string if d is DType.STRING else tf.as_dtype(d.value) for d in DType}
# Batch sizes run once at load: a single row and a small batch, so that the first requests find every
# kernel and allocator path initialised (the graph itself is traced only once, batch dim None).
WARMUP_ROWS = (1, 32)

FlatCall = Callable[..., Sequence[tf.Tensor]]


def trace_serving_function(forward: Callable[[list[tf.Tensor]], Sequence[tf.Tensor]], signature: Signature) -> Any:
    """Trace ``forward`` (input tensors in signature order -> output tensors in signature order) into a
    ConcreteFunction with one input per signature input. -1 dims stay unknown, so one trace serves every
    batch size."""
    specs = [
        tf.TensorSpec([None if d < 0 else d for d in spec.shape], TF_DTYPES[spec.dtype]) for spec in signature.inputs
    ]

    def serve(*tensors: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return tuple(forward(list(tensors)))

    return tf.function(serve, input_signature=specs, autograph=False).get_concrete_function()


def _flat_call(function: Any) -> FlatCall:
    """The cheapest way to call ``function`` with flat tensors, returning flat outputs."""
    atomic = getattr(function, "inference_fn", None)
    call_flat = getattr(atomic, "call_flat", None)
    if call_flat is None:  # a TensorFlow without the flat entry point: the public call, slower but equal
        return lambda *tensors: tuple(function(*tensors))
    captures = tuple(function.captured_inputs)  # the variables' resource handles, bound once
    return lambda *tensors: call_flat(*tensors, *captures)


class Servable:
    """One loaded model version: its signature, its serving function and what keeps them alive."""

    def __init__(
        self,
        model_name: str,
        version: int,
        signature: Signature,
        function: Any,
        owner: object,
        estimated_bytes: int,
    ) -> None:
        """``function`` is a ConcreteFunction from ``trace_serving_function``; ``owner`` (the Keras model or
        the loaded SavedModel) holds the variables it reads."""
        self.model_name = model_name
        self.version = version
        self.signature = signature
        self.estimated_bytes = estimated_bytes
        # Dim 0 of every input and output is a free batch dim: requests can be concatenated and split.
        specs = signature.inputs + signature.outputs
        self.batchable = all(len(s.shape) >= 1 and s.shape[0] == -1 for s in specs)
        self._inputs = tuple((s.name, TF_DTYPES[s.dtype]) for s in signature.inputs)
        self._output_names = tuple(s.name for s in signature.outputs)
        self._function: Any = function
        self._owner: object = owner
        self._call: FlatCall | None = _flat_call(function)

    def __repr__(self) -> str:
        return f"Servable({self.model_name!r}, version={self.version})"

    @property
    def device(self) -> str:
        """Where the model's variables were placed ("CPU:0", "GPU:0"); "" for a model without variables."""
        for tensor in getattr(self._function, "captured_inputs", ()):
            if tensor.dtype == tf.resource and tensor.device:
                return short_device(tensor.device)
        return ""

    def run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on arrays by input name (already validated); blocking. Returns arrays by output
        name, which share memory with TensorFlow's result tensors (no copy)."""
        call = self._call  # one read: unload() may clear it meanwhile
        if call is None:
            raise Unavailable(f"model {self.model_name!r} version {self.version} was unloaded")
        tensors = [tf.constant(arrays[name], dtype=dtype) for name, dtype in self._inputs]
        try:
            outputs = call(*tensors)
        except tf.errors.InvalidArgumentError as e:
            # Data the signature cannot rule out, e.g. a token id outside an embedding's vocabulary.
            raise InvalidArgument.field("inputs", f"the model cannot run on these values: {_op_message(e)}") from None
        return {name: tensor.numpy() for name, tensor in zip(self._output_names, outputs, strict=True)}

    def warm_up(self, rows: Sequence[int] = WARMUP_ROWS) -> None:
        """Run zero batches, and check that the outputs match the signature (else ``FailedPrecondition``)."""
        for n in rows if self.batchable else (1,):
            outputs = self.run(zero_inputs(self.signature, n))
            for spec in self.signature.outputs:
                self._check_output(spec, outputs[spec.name], n)

    def _check_output(self, spec: TensorSpec, array: np.ndarray, rows: int) -> None:
        problem = None
        if array.dtype != NUMPY_DTYPES[spec.dtype]:
            problem = f"dtype {array.dtype}, the signature says {spec.dtype.value}"
        elif array.ndim != len(spec.shape):
            problem = f"rank {array.ndim}, the signature says {len(spec.shape)}"
        elif self.batchable and array.shape[0] != rows:
            problem = f"{array.shape[0]} rows for {rows} input rows"
        if problem is not None:
            raise FailedPrecondition(
                f"model {self.model_name!r} version {self.version} cannot be served: output {spec.name!r} has {problem}"
            )

    def unload(self) -> None:
        """Drop the model's objects so their memory can be freed once running calls end."""
        self._call = None
        self._function = None
        self._owner = None


# Graph references in TensorFlow error text: {{node x}}, [[...]], [Op:...] and terminal colour codes.
_GRAPH_REFS = re.compile(r"\{\{[^}]*\}\}|\[\[.*?\]\]|\[Op:[^\]]*\]|\x1b\[[0-9;]*m")


def _op_message(error: tf.errors.OpError) -> str:
    """The cause of a TensorFlow error, without the Python traceback and graph node names that TensorFlow
    adds around it ("Graph execution error: Detected at node ... File ..."): safe and short for clients."""
    lines = [line.strip() for line in _GRAPH_REFS.sub("", error.message).splitlines()]
    causes = [line for line in lines if line and not line.startswith("File ") and not line.endswith(":")]
    cause = causes[-1] if causes else type(error).__name__
    return cause if len(cause) <= 200 else cause[:197] + "..."


def zero_inputs(signature: Signature, rows: int) -> dict[str, np.ndarray]:
    """All-zero (empty-string) inputs of ``rows`` rows; unknown non-batch dims get size 1."""
    arrays = {}
    for spec in signature.inputs:
        shape = tuple((rows if axis == 0 else 1) if d < 0 else d for axis, d in enumerate(spec.shape))
        if spec.dtype is DType.STRING:
            arrays[spec.name] = np.full(shape, b"", dtype=object)
        else:
            arrays[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.dtype])
    return arrays


def variables_bytes(variables: Sequence[Any]) -> int:
    """Bytes held by ``variables`` (tf.Variable or Keras variables), without reading their values."""
    total = 0
    for v in variables:
        count = int(np.prod(v.shape)) if len(v.shape) else 1
        total += count * tf.as_dtype(v.dtype).size
    return total


_threads_configured = False


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Apply TensorFlow's thread pool sizes (0 = TensorFlow's default); call once at start-up, before any
    TensorFlow op has run. Later calls, or calls after TensorFlow started, only log."""
    global _threads_configured
    if _threads_configured:
        return
    _threads_configured = True
    threading = tf.config.threading
    try:
        if intra_op:
            threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:  # the TensorFlow runtime is initialised already; its pools cannot be resized
        log.warning(
            "TensorFlow thread settings not applied: TensorFlow was already initialised",
            extra={
                "intra_op": threading.get_intra_op_parallelism_threads(),
                "inter_op": threading.get_inter_op_parallelism_threads(),
            },
        )
    init_devices()  # after the thread settings: the device scan starts TensorFlow's runtime
