"""The effective loss, optimizer, learning rate and metrics of a session: the request, else the model's own
compile config, else the defaults (Adam; a loss has no default).

The compile config is read as JSON from the artifact (``compile_config`` in a .keras file's config.json,
``training_config`` in a .h5 file), never by ``load_model(compile=True)``: the registry's safety checks skip it
(models are served with ``compile=False``), and deserialising it blindly would build whatever classes it names.
Here only Keras's own losses and the four optimizers the contract names are taken from it, after the same
class check the registry applies to model configs.

Blocking and Keras-bound: runs on the session's training thread.
"""

from __future__ import annotations

import enum
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tt_server.errors import FailedPrecondition, InvalidArgument, TensorTriggerError
from tt_server.formats.inspect import check_config_classes
from tt_server.training.messages import OptimizerKind, TrainSpec
from tt_server.types import ModelFormat

log = logging.getLogger(__name__)

_BINARY_LOSSES = frozenset({"binary_crossentropy", "binary_focal_crossentropy"})
_CATEGORICAL_LOSSES = frozenset({"categorical_crossentropy", "categorical_focal_crossentropy"})
_SPARSE_LOSSES = frozenset({"sparse_categorical_crossentropy"})
_ACCURACY_NAMES = frozenset({"accuracy", "acc"})


class Task(enum.StrEnum):
    """What the loss says the model does; decides the accuracy metric and the label specs."""

    BINARY = "binary"  # labels 0/1 like the output; accuracy at threshold 0.5 (0 on logits)
    CATEGORICAL = "categorical"  # one-hot labels like the output; accuracy by argmax
    SPARSE = "sparse"  # class-id labels (the output's shape without its last dim); accuracy by argmax
    OTHER = "other"  # regression and the rest: no accuracy


@dataclass(slots=True)
class Recipe:
    """Keras objects for one session; used on the training thread only."""

    loss: Any  # a Keras loss (function or Loss instance)
    loss_identifier: str | dict[str, Any]  # what ``model.compile`` gets, so checkpoints carry the compile config
    loss_name: str
    task: Task
    from_logits: bool
    optimizer: Any
    optimizer_kind: OptimizerKind
    learning_rate: float
    metric_names: tuple[str, ...]

    def make_metric(self, name: str) -> Any:
        """A fresh Keras metric for a requested name; "accuracy" is the one matching the task."""
        import keras

        if name in _ACCURACY_NAMES:
            return self.make_accuracy() or keras.metrics.Accuracy()
        return keras.metrics.get(name)

    def make_accuracy(self) -> Any | None:
        import keras

        if self.task is Task.BINARY:
            return keras.metrics.BinaryAccuracy(threshold=0.0 if self.from_logits else 0.5)
        if self.task is Task.CATEGORICAL:
            return keras.metrics.CategoricalAccuracy()
        if self.task is Task.SPARSE:
            return keras.metrics.SparseCategoricalAccuracy()
        return None


def read_compile_config(artifact: Path, fmt: ModelFormat) -> dict[str, Any] | None:
    """The model's compile config as plain JSON (Keras 3 shape: ``loss``, ``optimizer``), None when absent."""
    if fmt is ModelFormat.KERAS:
        with zipfile.ZipFile(artifact) as zf:
            config = json.loads(zf.read("config.json"))
        compiled = config.get("compile_config") if isinstance(config, dict) else None
        return compiled if isinstance(compiled, dict) else None
    if fmt is ModelFormat.H5:
        import h5py

        with h5py.File(artifact, "r") as f:
            raw = f.attrs.get("training_config")
        if raw is None:
            return None
        legacy = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        if not isinstance(legacy, dict):
            return None
        # Legacy HDF5 keeps the optimizer under "optimizer_config" without a module; same meaning.
        return {"loss": legacy.get("loss"), "optimizer": legacy.get("optimizer_config")}
    return None


def build_recipe(spec: TrainSpec, compiled: dict[str, Any] | None, allowed_custom: frozenset[str]) -> Recipe:
    """Resolve the session's recipe; ``InvalidArgument`` for bad request fields, ``FailedPrecondition`` when
    the model has no usable loss and none was given."""
    compiled = compiled or {}
    loss, identifier, loss_name = _loss(spec.loss, compiled.get("loss"), allowed_custom)
    canonical = _canonical_loss_name(loss)
    task = (
        Task.BINARY
        if canonical in _BINARY_LOSSES
        else Task.CATEGORICAL
        if canonical in _CATEGORICAL_LOSSES
        else Task.SPARSE
        if canonical in _SPARSE_LOSSES
        else Task.OTHER
    )
    from_logits = bool(_loss_config(loss).get("from_logits", False))
    optimizer, kind = _optimizer(spec, compiled.get("optimizer"), allowed_custom)
    recipe = Recipe(
        loss=loss,
        loss_identifier=identifier,
        loss_name=loss_name,
        task=task,
        from_logits=from_logits,
        optimizer=optimizer,
        optimizer_kind=kind,
        learning_rate=float(optimizer.learning_rate.numpy()),
        metric_names=spec.metrics,
    )
    for i, name in enumerate(spec.metrics):
        try:
            usable = hasattr(recipe.make_metric(name), "update_state")
        except ValueError:
            usable = False
        if not usable:
            raise InvalidArgument.field(f"config.metrics[{i}]", f"unknown metric {name!r}")
    if len(set(spec.metrics)) != len(spec.metrics):
        raise InvalidArgument.field("config.metrics", "metric names repeat")
    return recipe


def _loss(requested: str | None, compiled: object, allowed: frozenset[str]) -> tuple[Any, str | dict[str, Any], str]:
    import keras

    if requested:
        try:
            return keras.losses.get(requested), requested, requested
        except (ValueError, TypeError):
            raise InvalidArgument.field("config.loss", f"unknown loss {requested!r}") from None
    if compiled is None:
        raise FailedPrecondition("no loss given and the model has none: set config.loss")
    try:
        if isinstance(compiled, str):
            return keras.losses.get(compiled), compiled, compiled
        if isinstance(compiled, dict):
            check_config_classes(compiled, allowed)
            loss = keras.losses.deserialize(compiled)
            inner = compiled.get("config")
            name = inner.get("name") if isinstance(inner, dict) else None
            return loss, compiled, str(name or compiled.get("class_name"))
    except TensorTriggerError as e:
        raise FailedPrecondition(
            f"the model's compile config has an unusable loss ({e.message}); set config.loss"
        ) from None
    except (ValueError, TypeError, KeyError):
        pass
    raise FailedPrecondition("the model's compile config has a loss this server cannot use; set config.loss")


def _canonical_loss_name(loss: Any) -> str:
    """Keras's own name of a loss ("binary_crossentropy"), whether it is a function or a Loss object."""
    fn = getattr(loss, "fn", None)  # LossFunctionWrapper and the built-in Loss classes wrap a function
    for candidate in (fn, loss):
        name = getattr(candidate, "__name__", None)
        if isinstance(name, str):
            return name
    return str(getattr(loss, "name", ""))


def _loss_config(loss: Any) -> dict[str, Any]:
    get_config = getattr(loss, "get_config", None)
    try:
        config = get_config() if callable(get_config) else {}
    except (NotImplementedError, TypeError):
        config = {}
    return config if isinstance(config, dict) else {}


def _optimizer(spec: TrainSpec, compiled: object, allowed: frozenset[str]) -> tuple[Any, OptimizerKind]:
    import keras

    kind = spec.optimizer
    config: dict[str, Any] = {}
    if kind is None and isinstance(compiled, dict):
        try:
            check_config_classes(compiled, allowed)
            kind = OptimizerKind(str(compiled.get("class_name")))
            raw = compiled.get("config")
            config = dict(raw) if isinstance(raw, dict) else {}
        except (TensorTriggerError, ValueError):
            kind = None  # another (or a custom) optimizer: the documented fallback is Adam
            log.info("model's optimizer not usable for online training; using Adam", extra={"config": str(compiled)})
        if not isinstance(config.get("learning_rate"), int | float):
            config.pop("learning_rate", None)  # a schedule: its step count means nothing in a new session
    kind = kind or OptimizerKind.ADAM
    if spec.learning_rate is not None:
        config["learning_rate"] = spec.learning_rate
    if spec.momentum:
        if kind is not OptimizerKind.SGD:
            raise InvalidArgument.field("config.momentum", f"only SGD takes a momentum; the optimizer is {kind.value}")
        config["momentum"] = spec.momentum
    cls = getattr(keras.optimizers, kind.value)
    try:
        return cls.from_config(config), kind
    except (ValueError, TypeError) as e:
        raise FailedPrecondition(f"the {kind.value} optimizer cannot be built from the model's config: {e}") from None
