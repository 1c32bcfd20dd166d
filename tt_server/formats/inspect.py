"""Validate an uploaded artifact without trusting it, and read its Signature.

Blocking (TensorFlow, Keras, h5py): the caller runs :func:`inspect_artifact` in a worker thread. Nothing is
loaded before it has been checked statically:

* Keras (``.keras``, ``.h5``): every object in the model config must be a Keras built-in or an allowed
  custom object, ``Lambda`` layers are refused unless allowed, and HDF5 files may not reference other files
  (external links, external or virtual datasets). Then ``keras.saving.load_model(safe_mode=True)``.
* SavedModel archives: safe unpacking (:mod:`.artifacts`), then the op scan (:mod:`.safety`) of
  ``saved_model.pb``, then ``tf.saved_model.load``.
* Frozen graphs (``.pb``): parsing and the named nodes' existence (:mod:`.frozen_graph`), the op scan of the
  GraphDef and its function library, then the import and prune the loader will do.

TensorFlow, Keras and h5py are imported on first use so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import shutil
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tt_server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from tt_server.formats.artifacts import SAVED_MODEL_PB, ArchiveLimits, check_zip_members, unpack_archive
from tt_server.formats.frozen_graph import check_nodes, import_frozen_graph, parse_graph_def
from tt_server.formats.safety import scan_graph_def, scan_saved_model
from tt_server.types import DType, FrozenGraphNodes, ModelFormat, Signature, TensorSpec

if TYPE_CHECKING:
    import h5py

_MAX_CONFIG_BYTES = 64 << 20
_COPY_CHUNK = 1 << 20
# Config entries Keras turns into plain data (tensors, arrays, slices), never into classes.
_DATA_CLASSES = frozenset({"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__"})
# Built-ins that load code or files named in their config; Keras's safe_mode refuses them too.
_NEVER_ALLOWED = {
    "TFSMLayer": "loads a SavedModel from a path on the server",
    "TorchModuleWrapper": "unpickles a PyTorch module",
}
LAMBDA_LAYER = "keras.layers.Lambda"


def inspect_artifact(
    path: Path,
    fmt: ModelFormat,
    work_dir: Path,
    limits: ArchiveLimits,
    allowed_custom_objects: frozenset[str],
    frozen_graph: FrozenGraphNodes | None = None,
    allow_non_finite: bool = False,
) -> Signature:
    """Check the artifact at ``path`` (already identified as ``fmt``) and return its signature.

    ``work_dir`` is an existing scratch directory the caller removes afterwards; ``frozen_graph`` names the
    nodes of a ``FROZEN_GRAPH``. Raises InvalidArgument for corrupt files, FailedPrecondition for unsafe or
    unusable models, ResourceExhausted for archives over the ``limits``, and FailedPrecondition for weights
    holding NaN or infinite values unless ``allow_non_finite``.
    """
    if fmt is ModelFormat.FROZEN_GRAPH:
        if frozen_graph is None:
            raise InvalidArgument.field("spec.frozen_graph", "a frozen graph needs its input and output nodes")
        return _inspect_frozen_graph(path, frozen_graph, allow_non_finite)
    if fmt is ModelFormat.KERAS:
        return _inspect_keras(path, work_dir, limits, allowed_custom_objects, allow_non_finite)
    if fmt is ModelFormat.H5:
        return _inspect_h5(path, work_dir, allowed_custom_objects, allow_non_finite)
    return _inspect_saved_model(path, work_dir, limits, allow_non_finite)


def _check_finite(weights: Any) -> None:
    """``weights``: (name, array) pairs. A NaN or Inf weight makes every answer NaN: refuse the version."""
    import numpy as np

    for name, value in weights:
        array = np.asarray(value)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise FailedPrecondition(
                f"weight {name!r} holds NaN or infinite values: such a model answers NaN (set "
                "TT_ALLOW_NON_FINITE_WEIGHTS=true to accept it anyway)"
            )


# --- Keras ----------------------------------------------------------------------------------------------


def _inspect_keras(
    path: Path, work_dir: Path, limits: ArchiveLimits, allowed: frozenset[str], allow_non_finite: bool
) -> Signature:
    import h5py

    try:
        with zipfile.ZipFile(path) as zf:
            check_zip_members(zf, path.stat().st_size, limits)
            info = zf.getinfo("config.json")
            if info.file_size > _MAX_CONFIG_BYTES:
                raise ResourceExhausted(f"config.json is larger than {_MAX_CONFIG_BYTES} bytes")
            config = _parse_json(zf.read(info), "config.json")
            check_config_classes(config, allowed)
            for name in zf.namelist():
                if name.endswith(".h5"):  # model.weights.h5, or its shards
                    # Copied out first: h5py seeks a lot, and a zip member re-reads from its start on
                    # every backward seek. zipfile stops at the (already checked) declared size.
                    copy = work_dir / "weights-check.h5"
                    with zf.open(name) as member, copy.open("wb") as out:
                        shutil.copyfileobj(member, out, _COPY_CHUNK)
                    with h5py.File(copy, "r") as weights:
                        check_h5_storage(weights, name)
                    copy.unlink()
    except (zipfile.BadZipFile, EOFError, zlib.error, KeyError, OSError) as e:
        raise _corrupt("the .keras file is truncated or corrupt:", e) from None
    return _checked_keras_signature(_load_keras(_with_suffix(path, work_dir, ".keras")), allow_non_finite)


def _checked_keras_signature(model: Any, allow_non_finite: bool) -> Signature:
    if not allow_non_finite:
        _check_finite((getattr(w, "path", w.name), w.numpy()) for w in model.weights)
    return _keras_signature(model)


def _inspect_h5(path: Path, work_dir: Path, allowed: frozenset[str], allow_non_finite: bool) -> Signature:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise InvalidArgument.field(
                    "artifact",
                    "the .h5 file holds weights only, no model config: save with model.save('x.h5')",
                )
            config = _parse_json(raw, "model_config")
            check_config_classes(config, allowed)
            check_h5_storage(f, path.name)
    except OSError as e:
        raise _corrupt("the .h5 file is truncated or corrupt:", e) from None
    return _checked_keras_signature(_load_keras(_with_suffix(path, work_dir, ".h5")), allow_non_finite)


def _parse_json(raw: Any, what: str) -> Any:
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, TypeError, RecursionError):  # RecursionError: absurdly deep nesting
        raise InvalidArgument.field("artifact", f"the model's {what} is not valid JSON") from None


def check_config_classes(config: Any, allowed: frozenset[str]) -> None:
    """Walk a Keras model config; raise FailedPrecondition at the first object Keras would build from code
    that is neither a Keras built-in nor listed in ``allowed`` (``module.Class`` names)."""
    if isinstance(config, dict):
        # load_model(compile=False) drops the top-level compile config (custom losses live there) unread.
        config = {k: v for k, v in config.items() if k != "compile_config"}
    pending = [config]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending += item
        elif isinstance(item, dict):
            pending += item.values()
            if "class_name" in item:
                _check_class(item, allowed)


def _check_class(item: dict[str, Any], allowed: frozenset[str]) -> None:
    class_name = item["class_name"]
    if not isinstance(class_name, str):
        raise FailedPrecondition("the model config is malformed: a class_name is not a string")
    if class_name in _DATA_CLASSES:
        return
    if class_name == "__lambda__":
        raise FailedPrecondition("the model config holds a Python lambda (bytecode), which is never loaded")
    module = item.get("module")
    registered = item.get("registered_name")
    if class_name == "__typespec__":
        if isinstance(module, str) and module.startswith("tensorflow.") and not registered:
            return
        raise FailedPrecondition(f"the model config holds a non-TensorFlow type spec from {module!r}")

    inner = item.get("config")
    # For functions the symbol's name is the config; Keras resolves it under that name.
    symbol = inner if class_name == "function" and isinstance(inner, str) else class_name
    if "module" not in item:  # legacy (.h5) config: built-ins by bare name, custom ones as "package>Name"
        builtin = ">" not in class_name and not registered
    else:
        builtin = (
            isinstance(module, str)
            and (module in ("keras", "builtins") or module.startswith("keras."))
            and registered in (None, symbol, class_name)
        )
    layer = _layer_label(item)
    if builtin:
        if class_name in _NEVER_ALLOWED:
            raise FailedPrecondition(f"the model uses {class_name}{layer}, which {_NEVER_ALLOWED[class_name]}")
        if class_name == "Lambda" and LAMBDA_LAYER not in allowed:
            raise FailedPrecondition(f"the model uses a Lambda layer{layer}; Lambda layers run arbitrary Python code")
        if isinstance(inner, dict) and isinstance(inner.get("vocabulary"), str):
            raise FailedPrecondition(f"{class_name}{layer} reads its vocabulary from a file on the server")
        return

    # Keras resolves custom objects by registered name, so check what that name resolves to here.
    import keras

    key = registered if isinstance(registered, str) else symbol
    obj = keras.saving.get_registered_object(key)
    qualified = f"{obj.__module__}.{obj.__qualname__}" if obj is not None else None
    if qualified not in allowed:
        shown = f"{module}.{symbol}" if isinstance(module, str) else key
        raise FailedPrecondition(
            f"the model uses custom object {shown!r}{layer}, which is not a Keras built-in nor in the "
            "server's allowed custom objects"
        )


def _layer_label(item: dict[str, Any]) -> str:
    inner = item.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    return f" (layer {name!r})" if isinstance(name, str) else ""


def check_h5_storage(h5: h5py.Group, where: str) -> None:
    """Refuse HDF5 content stored outside the file: reading it would read other files on the server."""
    import h5py

    # The visitors stop at the first non-None return; raising inside them upsets h5py's locking.
    def external_link(name: str, link: object) -> str | None:
        return name if isinstance(link, h5py.ExternalLink) else None

    def external_data(name: str, obj: object) -> str | None:
        return name if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual) else None

    if (name := h5.visititems_links(external_link)) is not None:
        raise FailedPrecondition(f"unsafe HDF5 file {where}: {name!r} links to another file")
    if (name := h5.visititems(external_data)) is not None:
        raise FailedPrecondition(f"unsafe HDF5 file {where}: dataset {name!r} is stored in other files")


def _with_suffix(path: Path, work_dir: Path, suffix: str) -> Path:
    # keras.saving.load_model picks its loader by file extension; blobs are spooled without one.
    if path.suffix == suffix:
        return path
    link = work_dir / f"model{suffix}"
    link.unlink(missing_ok=True)
    link.symlink_to(path.resolve())
    return link


def _load_keras(path: Path) -> Any:
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # Keras raises ValueError, TypeError, KeyError, OSError ... for bad files
        raise _corrupt("the Keras model could not be loaded; is the file truncated or corrupt?", e) from None


def _keras_signature(model: Any) -> Signature:
    inputs = _attr_list(model, "inputs")
    if not inputs:
        raise FailedPrecondition("model has no input shape; build it with keras.Input")
    outputs = _attr_list(model, "outputs")
    in_names = _dict_keys(_attr(model, "input"), len(inputs)) or _unique([_layer_name(t) for t in inputs])
    out_names = _dict_keys(_attr(model, "output"), len(outputs))
    if out_names is None:
        names = _attr(model, "output_names")  # Functional has it, Sequential does not
        if not (isinstance(names, list) and len(names) == len(outputs)):
            names = [_layer_name(t) for t in outputs]
        out_names = _unique(names)
    return Signature(
        inputs=tuple(_keras_spec(n, t) for n, t in zip(in_names, inputs, strict=True)),
        outputs=tuple(_keras_spec(n, t) for n, t in zip(out_names, outputs, strict=True)),
    )


def _attr(model: Any, name: str) -> Any:
    try:
        return getattr(model, name, None)
    except (AttributeError, ValueError):  # some Keras properties raise on unbuilt models
        return None


def _attr_list(model: Any, name: str) -> list[Any]:
    value = _attr(model, name)
    return list(value) if value else []


def _dict_keys(struct: Any, count: int) -> list[str] | None:
    """A model built from dicts is called with, and returns, dicts: name its tensors by key.

    Keras flattens dicts in sorted key order, the order of ``model.inputs`` / ``model.outputs``.
    """
    if isinstance(struct, dict) and len(struct) == count and all(isinstance(k, str) for k in struct):
        return sorted(struct)
    return None


def _layer_name(tensor: Any) -> str:
    # Keras 3 names a functional model's input tensors after their Input layers, but outputs get
    # generated names ("keras_tensor_7"); the producing layer's name is stable across save/load.
    history = getattr(tensor, "_keras_history", None)
    layer = history[0] if history else None
    return str(getattr(layer, "name", None) or tensor.name)


def _unique(names: list[str]) -> list[str]:
    counts = Counter(names)
    return [name if counts[name] == 1 else f"{name}_{i}" for i, name in enumerate(names)]


def _keras_spec(name: str, tensor: Any) -> TensorSpec:
    shape = tuple(-1 if d is None else int(d) for d in tensor.shape)
    return TensorSpec(name, _dtype(str(tensor.dtype), name), shape)


def _dtype(name: str, tensor: str) -> DType:
    try:
        return DType(name)
    except ValueError:
        supported = ", ".join(d.value for d in DType)
        raise FailedPrecondition(
            f"tensor {tensor!r} has dtype {name}, which is not supported (supported: {supported})"
        ) from None


# --- frozen graphs -------------------------------------------------------------------------------------


def _inspect_frozen_graph(path: Path, nodes: FrozenGraphNodes, allow_non_finite: bool) -> Signature:
    graph = parse_graph_def(path.read_bytes())
    check_nodes(graph, nodes)
    scan_graph_def(graph, nodes.outputs)
    if not allow_non_finite:
        import tensorflow as tf

        # A frozen graph's weights are its float constants.
        _check_finite(
            (node.name, tf.make_ndarray(node.attr["value"].tensor))
            for node in graph.node
            if node.op == "Const" and node.attr["dtype"].type in (tf.float16, tf.float32, tf.float64)
        )
    return import_frozen_graph(graph, nodes)[1]


# --- SavedModel -----------------------------------------------------------------------------------------


def _inspect_saved_model(path: Path, work_dir: Path, limits: ArchiveLimits, allow_non_finite: bool) -> Signature:
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    root = unpack_archive(path, work_dir / "saved_model", limits)
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((root / SAVED_MODEL_PB).read_bytes())
    except DecodeError as e:
        raise _corrupt(f"{SAVED_MODEL_PB} is truncated or corrupt:", e) from None
    scan_saved_model(proto)
    del proto  # can be large; TensorFlow parses its own copy

    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(root))
    except Exception as e:  # TF raises OpError subclasses, ValueError, KeyError ... for bad models
        raise _corrupt("the SavedModel could not be loaded; is it truncated or corrupt?", e) from None
    function = loaded.signatures.get("serving_default")
    if function is None:
        raise FailedPrecondition("SavedModel has no serving_default signature")
    checkpoint = root / "variables" / "variables"
    if not allow_non_finite and (root / "variables" / "variables.index").exists():
        reader = tf.train.load_checkpoint(str(checkpoint))
        _check_finite((name, reader.get_tensor(name)) for name, _ in tf.train.list_variables(str(checkpoint)))
    args, kwargs = function.structured_input_signature
    inputs = {**{spec.name: spec for spec in tf.nest.flatten(args)}, **kwargs}
    outputs = function.structured_outputs
    if not isinstance(outputs, dict):
        outputs = {f"output_{i}": spec for i, spec in enumerate(tf.nest.flatten(outputs))}
    return Signature(
        inputs=tuple(_tf_spec(name, spec) for name, spec in sorted(inputs.items())),
        outputs=tuple(_tf_spec(name, spec) for name, spec in sorted(outputs.items())),
    )


def _tf_spec(name: str, spec: Any) -> TensorSpec:
    if spec.shape.rank is None:
        raise FailedPrecondition(f"tensor {name!r} of the serving_default signature has an unknown rank")
    shape = tuple(-1 if d is None else int(d) for d in spec.shape.as_list())
    return TensorSpec(name, _dtype(spec.dtype.name, name), shape)


def _corrupt(message: str, e: BaseException) -> InvalidArgument:
    """``message`` plus a short, client-safe detail; library errors can carry whole configs and tracebacks."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = lines[0] if lines else type(e).__name__
    if len(detail) > 200:
        detail = detail[:197] + "..."
    return InvalidArgument.field("artifact", f"{message} {detail}")
