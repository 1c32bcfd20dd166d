"""Loader: turns one model version's artifact on local disk into a warmed-up ``Servable``.

TF Serving's loader contract: the constructor is cheap and touches nothing; ``load()`` does all the heavy,
blocking work (reading the artifact, building the model, tracing, warm-up) and runs in a worker thread,
never on the event loop. A loader is used once. It trusts its artifact only as far as the registry did:
the bytes are checked against the version's sha256 first, so they are exactly the bytes inspected at upload
(Keras safe mode, allowed classes, the SavedModel op scan).

The serving function's inputs and outputs follow the stored signature, which ``registry.inspect`` built
from the same model: Keras inputs/outputs in ``model.inputs`` / ``model.outputs`` order (named by dict key
when the model takes or returns dicts), SavedModel ``serving_default`` arguments and outputs by name, frozen
graphs' input and output nodes in the order the version records them.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tensorflow as tf

from tt_server.errors import FailedPrecondition
from tt_server.registry.artifacts import ArchiveLimits, unpack_archive
from tt_server.registry.frozen_graph import import_frozen_graph, parse_graph_def
from tt_server.runtime.servable import Servable, trace_serving_function, variables_bytes
from tt_server.types import ModelFormat, ModelVersion

_HASH_CHUNK = 1 << 20
# keras.saving.load_model picks its reader by file extension.
ARTIFACT_SUFFIX = {
    ModelFormat.KERAS: ".keras",
    ModelFormat.H5: ".h5",
    ModelFormat.SAVED_MODEL_TAR_GZ: ".tar.gz",
    ModelFormat.SAVED_MODEL_ZIP: ".zip",
    ModelFormat.FROZEN_GRAPH: ".pb",
}


class Loader:
    """Loads ``version`` from ``artifact`` (a local file, named with ``ARTIFACT_SUFFIX[version.format]``).

    ``work_dir`` is scratch space for unpacking archives; ``load`` removes what it unpacked.
    """

    def __init__(self, version: ModelVersion, artifact: Path, work_dir: Path, limits: ArchiveLimits) -> None:
        self.version = version
        self._artifact = artifact
        self._work_dir = work_dir
        self._limits = limits

    def load(self) -> Servable:
        """Blocking: verify, load, trace and warm up. Raises ``FailedPrecondition`` for an artifact that does
        not match its version record or cannot be served."""
        self._verify_sha256()
        fmt = self.version.format
        if fmt in (ModelFormat.KERAS, ModelFormat.H5):
            servable = self._load_keras()
        elif fmt is ModelFormat.FROZEN_GRAPH:
            servable = self._load_frozen_graph()
        else:
            servable = self._load_saved_model()
        servable.warm_up()
        return servable

    def _verify_sha256(self) -> None:
        digest = hashlib.sha256()
        with self._artifact.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != self.version.sha256:
            raise FailedPrecondition(
                f"model {self.version.model_name!r} version {self.version.version}: the stored artifact does "
                "not match its recorded sha256"
            )

    def _load_keras(self) -> Servable:
        import keras

        v = self.version
        model = keras.saving.load_model(self._artifact, safe_mode=True, compile=False)
        in_names = [s.name for s in v.signature.inputs]
        out_names = [s.name for s in v.signature.outputs]
        takes_dict = isinstance(getattr(model, "input", None), dict)

        def forward(tensors: list[tf.Tensor]) -> Sequence[tf.Tensor]:
            if takes_dict:
                inputs: Any = dict(zip(in_names, tensors, strict=True))
            else:
                inputs = tensors[0] if len(tensors) == 1 else tensors
            return _named_outputs(model(inputs, training=False), out_names)

        function = trace_serving_function(forward, v.signature)
        return Servable(v.model_name, v.version, v.signature, function, model, variables_bytes(model.weights))

    def _load_saved_model(self) -> Servable:
        v = self.version
        unpacked = self._work_dir / "saved_model"
        try:
            root = unpack_archive(self._artifact, unpacked, self._limits)
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

        function = trace_serving_function(forward, v.signature)
        size = variables_bytes(function.variables)
        return Servable(v.model_name, v.version, v.signature, function, loaded, size)

    def _load_frozen_graph(self) -> Servable:
        v = self.version
        if v.frozen_graph is None:
            raise FailedPrecondition(f"model {v.model_name!r} version {v.version} has no frozen graph node names")
        graph = parse_graph_def(self._artifact.read_bytes())
        pruned, _ = import_frozen_graph(graph, v.frozen_graph)
        del graph  # the pruned function holds its own copy of the constants

        def forward(tensors: list[tf.Tensor]) -> Sequence[tf.Tensor]:
            outputs: Sequence[tf.Tensor] = pruned(*tensors)  # a list, in output node order
            return outputs

        function = trace_serving_function(forward, v.signature)
        # No variables: the weights are constants inside the graph, whose size is about the artifact's.
        return Servable(v.model_name, v.version, v.signature, function, pruned, self._artifact.stat().st_size)


def _named_outputs(result: Any, names: Sequence[str]) -> list[tf.Tensor]:
    """A Keras call's result as tensors in signature order."""
    if isinstance(result, dict):
        return [result[name] for name in names]
    flat: list[tf.Tensor] = tf.nest.flatten(result)
    if len(flat) != len(names):
        raise FailedPrecondition(f"the model returned {len(flat)} outputs, its signature has {len(names)}")
    return flat
