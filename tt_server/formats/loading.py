"""Per-format loading: one model version's artifact on local disk -> a forward function over its signature.

The runtime's ``Loader`` traces the forward function into the serving function; this module only knows how
each format is read and called. The inputs and outputs follow the stored signature, which ``formats.inspect``
built from the same model at upload: Keras inputs/outputs in ``model.inputs`` / ``model.outputs`` order (named
by dict key when the model takes or returns dicts), SavedModel ``serving_default`` arguments and outputs by
name, frozen graphs' input and output nodes in the order the version records them.

Blocking (TensorFlow, Keras): callers run it in a worker thread.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from tt_server.errors import FailedPrecondition
from tt_server.formats.artifacts import ArchiveLimits, unpack_archive
from tt_server.formats.frozen_graph import import_frozen_graph, parse_graph_def
from tt_server.types import ModelFormat, ModelVersion

Forward = Callable[[list[tf.Tensor]], Sequence[tf.Tensor]]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model read from its artifact, ready to be traced."""

    forward: Forward  # input tensors in signature order -> output tensors in signature order
    model: Any  # what ``forward`` calls; whoever serves it keeps it alive
    weights: Sequence[Any] | None  # the variables holding its weights; None: the traced function's variables
    constant_bytes: int = 0  # weights folded into graph constants (frozen graphs)


def load_model(version: ModelVersion, artifact: Path, work_dir: Path, limits: ArchiveLimits) -> LoadedModel:
    """Read ``artifact`` (named with ``ARTIFACT_SUFFIX[version.format]``) as ``version.format``. ``work_dir`` is
    scratch space for unpacking archives; what is unpacked is removed before this returns."""
    fmt = version.format
    if fmt in (ModelFormat.KERAS, ModelFormat.H5):
        return _load_keras(version, artifact)
    if fmt is ModelFormat.FROZEN_GRAPH:
        return _load_frozen_graph(version, artifact)
    return _load_saved_model(version, artifact, work_dir, limits)


def _load_keras(v: ModelVersion, artifact: Path) -> LoadedModel:
    import keras

    model = keras.saving.load_model(artifact, safe_mode=True, compile=False)
    in_names = [s.name for s in v.signature.inputs]
    out_names = [s.name for s in v.signature.outputs]
    takes_dict = isinstance(getattr(model, "input", None), dict)

    def forward(tensors: list[tf.Tensor]) -> Sequence[tf.Tensor]:
        if takes_dict:
            inputs: Any = dict(zip(in_names, tensors, strict=True))
        else:
            inputs = tensors[0] if len(tensors) == 1 else tensors
        return _named_outputs(model(inputs, training=False), out_names)

    return LoadedModel(forward, model, model.weights)


def _load_saved_model(v: ModelVersion, artifact: Path, work_dir: Path, limits: ArchiveLimits) -> LoadedModel:
    unpacked = work_dir / "saved_model"
    try:
        root = unpack_archive(artifact, unpacked, limits)
        # Everything the model needs (variables, asset-initialised tables) is read here, so the unpacked
        # files can go right after.
        loaded = tf.saved_model.load(str(root))
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
    signature_fn = loaded.signatures.get("serving_default")
    if signature_fn is None:
        raise FailedPrecondition(f"model {v.model_name!r} version {v.version} has no serving_default")
    in_names = [s.name for s in v.signature.inputs]
    out_names = [s.name for s in v.signature.outputs]

    def forward(tensors: list[tf.Tensor]) -> Sequence[tf.Tensor]:
        # Signature functions take keyword arguments only, named as in the stored signature.
        result = signature_fn(**dict(zip(in_names, tensors, strict=True)))
        if not isinstance(result, dict):
            result = {f"output_{i}": t for i, t in enumerate(tf.nest.flatten(result))}
        return [result[name] for name in out_names]

    return LoadedModel(forward, loaded, None)


def _load_frozen_graph(v: ModelVersion, artifact: Path) -> LoadedModel:
    if v.frozen_graph is None:
        raise FailedPrecondition(f"model {v.model_name!r} version {v.version} has no frozen graph node names")
    graph = parse_graph_def(artifact.read_bytes())
    pruned, _ = import_frozen_graph(graph, v.frozen_graph)
    del graph  # the pruned function holds its own copy of the constants

    def forward(tensors: list[tf.Tensor]) -> Sequence[tf.Tensor]:
        outputs: Sequence[tf.Tensor] = pruned(*tensors)  # a list, in output node order
        return outputs

    # No variables: the weights are constants inside the graph, whose size is about the artifact's.
    return LoadedModel(forward, pruned, (), constant_bytes=artifact.stat().st_size)


def _named_outputs(result: Any, names: Sequence[str]) -> list[tf.Tensor]:
    """A Keras call's result as tensors in signature order."""
    if isinstance(result, dict):
        return [result[name] for name in names]
    flat: list[tf.Tensor] = tf.nest.flatten(result)
    if len(flat) != len(names):
        raise FailedPrecondition(f"the model returned {len(flat)} outputs, its signature has {len(names)}")
    return flat
