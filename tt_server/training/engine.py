"""Trainer: a private Keras copy of one model version, trained one micro-batch at a time.

Lifecycle (the loader's contract): the constructor is cheap; ``load()`` does the heavy, blocking work (verify
and read the artifact, resolve the recipe, trace the train and evaluation functions). Every method is blocking
and must run on the session's own training thread, which is the only thread that touches the Keras model: no
locks needed, and the event loop and the inference thread never wait on training.

The train step is one ``tf.function`` with a fixed ``input_signature`` (batch dim ``None``, so one trace serves
full and partial micro-batches), traced once at load and called through its flat entry point, as servables
are (re-binding the argument structure per call costs more than the step itself on small models). One step:

    prequential predictions (pre-update) -> loss and gradients (training mode) -> optimizer update

Prequential metrics come from the predictions made before the update, so every example is scored before it is
trained on. When the model behaves the same in training and inference mode (no dropout, batch norm, noise ...)
the training forward pass *is* that prediction and is reused; otherwise a separate inference-mode pass runs
first, which costs about a third of a step.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tt_server.errors import FailedPrecondition, TrainingDiverged
from tt_server.runtime.activity import SERVING
from tt_server.runtime.servable import TF_DTYPES, zero_inputs
from tt_server.training.decoding import Batch
from tt_server.training.messages import TrainSpec
from tt_server.training.recipe import Recipe, Task, build_recipe, read_compile_config
from tt_server.types import DType, ModelFormat, ModelVersion, Signature, TensorSpec

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20
EVAL_CHUNK_ROWS = 4096  # evaluation runs in chunks, so a large evaluate_only message stays bounded in memory


@dataclass(frozen=True, slots=True)
class StepResult:
    rows: int
    loss: float  # training loss of the step (with regularisation), pre-update
    prequential: dict[str, float]
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a saved checkpoint holds: the session's totals when its weights were written."""

    steps: int
    examples: int
    last: StepResult | None


@dataclass(frozen=True, slots=True)
class Evaluation:
    rows: int
    loss: float
    metrics: dict[str, float]


SERVING_FIRST_MAX_WAIT_SECONDS = 0.005  # per step: training still progresses under constant traffic


class Trainer:
    """Trains a copy of ``version`` loaded from ``artifact`` (a local file with the format's suffix)."""

    def __init__(self, version: ModelVersion, artifact: Path, spec: TrainSpec, allowed_custom: frozenset[str]) -> None:
        self.version = version
        self._artifact = artifact
        self._spec = spec
        self._allowed = allowed_custom
        self.recipe: Recipe | None = None
        self.label_specs: tuple[TensorSpec, ...] = ()
        self._model: Any = None
        self._step: Callable[..., tf.Tensor] | None = None
        self._eval: Callable[..., tf.Tensor] | None = None
        self._step_keys: tuple[tuple[str, str], ...] = ()  # (map, name) of each step value after the loss
        self._eval_metrics: list[tuple[str, int, Any]] = []
        # Session totals, kept here (on the training thread) so that a checkpoint taken after a cancelled
        # wait still counts every step that reached the weights.
        self.steps = 0
        self.examples = 0
        self._last: StepResult | None = None

    # --- load ---------------------------------------------------------------------------------------------
    def load(self) -> Recipe:
        """Verify, load, resolve the recipe and trace; returns the recipe. ``FailedPrecondition`` for models
        that cannot be trained, ``InvalidArgument`` for bad config fields."""
        import keras

        v = self.version
        check_trainable(v)
        _verify_sha256(self._artifact, v)
        recipe = build_recipe(self._spec, read_compile_config(self._artifact, v.format), self._allowed)
        model = keras.saving.load_model(self._artifact, safe_mode=True, compile=False)
        # Compiled with the effective loss and optimizer so that checkpoints carry them as their compile
        # config: the next session starting from a checkpoint continues with the same recipe.
        model.compile(optimizer=recipe.optimizer, loss=recipe.loss_identifier)
        recipe.optimizer.build(model.trainable_variables)
        self._model = model
        self.recipe = recipe
        self.label_specs = tuple(_label_spec(s, recipe.task) for s in v.signature.outputs)
        try:
            self._trace(model, recipe)
            self._warm_up()
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
            # E.g. a categorical loss on a one-unit output, or a metric that does not fit the output's shape.
            raise FailedPrecondition(
                f"model {v.model_name!r} version {v.version} cannot be trained with loss {recipe.loss_name!r} "
                f"and metrics {list(recipe.metric_names)}: {_first_line(e)}"
            ) from None
        return recipe

    def _warm_up(self) -> None:
        """Run one step and one evaluation on zeros, then put every variable back as it was.

        A traced function's first call initialises its runtime (~100 ms on the TFaaS MLP, measured); this way
        load() pays it, before ``started``, instead of the client's first message.
        """
        assert self._step is not None and self._eval is not None and self.recipe is not None
        variables = [*self._model.variables, *self.recipe.optimizer.variables]
        saved = [v.numpy() for v in variables]
        rows = self._spec.micro_batch_size
        features = zero_inputs(Signature(inputs=self.version.signature.inputs, outputs=()), rows)
        labels = zero_inputs(Signature(inputs=self.label_specs, outputs=()), rows)
        zeros = Batch(
            tuple(features[s.name] for s in self.version.signature.inputs),
            tuple(labels[s.name] for s in self.label_specs),
            rows,
        )
        self._step(*_tensors(zeros)).numpy()
        self._eval(*_tensors(zeros)).numpy()
        for variable, value in zip(variables, saved, strict=True):
            variable.assign(value)

    def _trace(self, model: Any, recipe: Recipe) -> None:
        sig = self.version.signature
        in_names = [s.name for s in sig.inputs]
        out_names = [s.name for s in sig.outputs]
        n_in = len(in_names)
        takes_dict = isinstance(getattr(model, "input", None), dict)
        two_pass = not _same_in_both_modes(model)

        def forward(features: Sequence[tf.Tensor], training: bool) -> list[tf.Tensor]:
            if takes_dict:
                inputs: Any = dict(zip(in_names, features, strict=True))
            else:
                inputs = features[0] if n_in == 1 else list(features)
            result = model(inputs, training=training)
            if isinstance(result, dict):
                return [result[name] for name in out_names]
            return list(tf.nest.flatten(result))

        def data_loss(labels: Sequence[tf.Tensor], preds: Sequence[tf.Tensor]) -> tf.Tensor:
            # One loss for every output, summed: what Keras does with a single loss and several outputs.
            return tf.add_n([tf.reduce_mean(recipe.loss(y, p)) for y, p in zip(labels, preds, strict=True)])

        def key(out: str, name: str) -> str:
            return name if len(out_names) == 1 else f"{out}.{name}"

        classifies = recipe.task is not Task.OTHER
        step_metrics: list[tuple[str, str, int, Any]] = []  # (map, key, output index, metric)
        for i, out in enumerate(out_names):
            if classifies:
                step_metrics.append(("prequential", key(out, "accuracy"), i, recipe.make_metric("accuracy")))
            step_metrics += [("metrics", key(out, n), i, recipe.make_metric(n)) for n in recipe.metric_names]
        self._step_keys = tuple((kind, name) for kind, name, _, _ in step_metrics)
        eval_names = (("accuracy",) if classifies else ()) + recipe.metric_names
        self._eval_metrics = [
            (key(out, n), i, recipe.make_metric(n))
            for i, out in enumerate(out_names)
            for n in dict.fromkeys(eval_names)
        ]
        trainable = model.trainable_variables
        optimizer = recipe.optimizer

        def step(*tensors: tf.Tensor) -> tf.Tensor:
            features, labels = tensors[:n_in], tensors[n_in:]
            if two_pass:
                preds = forward(features, training=False)
            with tf.GradientTape() as tape:
                outputs = forward(features, training=True)
                fit_loss = data_loss(labels, outputs)
                total = fit_loss + tf.add_n(model.losses) if model.losses else fit_loss
            gradients = tape.gradient(total, trainable)
            if two_pass:
                prequential_loss = data_loss(labels, preds)
            else:
                preds, prequential_loss = outputs, fit_loss
            values = [total, prequential_loss]
            for _, _, i, metric in step_metrics:
                metric.reset_state()
                metric.update_state(labels[i], preds[i])
                values.append(metric.result())
            optimizer.apply(gradients, trainable)
            return tf.stack([tf.cast(v, tf.float32) for v in values])

        def evaluate(*tensors: tf.Tensor) -> tf.Tensor:
            features, labels = tensors[:n_in], tensors[n_in:]
            preds = forward(features, training=False)
            for _, i, metric in self._eval_metrics:
                metric.update_state(labels[i], preds[i])
            return data_loss(labels, preds)

        specs = [_tf_spec(s) for s in (*sig.inputs, *self.label_specs)]
        self._step = _flat(tf.function(step, input_signature=specs, autograph=False).get_concrete_function())
        self._eval = _flat(tf.function(evaluate, input_signature=specs, autograph=False).get_concrete_function())

    # --- work -----------------------------------------------------------------------------------------
    def train(self, batches: Sequence[Batch]) -> list[StepResult]:
        """One train step per micro-batch, in order."""
        assert self._step is not None, "load() first"
        results = []
        for batch in batches:
            SERVING.wait_idle(SERVING_FIRST_MAX_WAIT_SECONDS)  # serving first: a waiting Predict goes ahead
            values = self._step(*_tensors(batch)).numpy()
            time.sleep(0)  # hand the GIL over now, not at the next switch interval (5 ms)
            prequential = {"loss": float(values[1])}
            metrics: dict[str, float] = {}
            for (kind, key), value in zip(self._step_keys, values[2:], strict=True):
                (prequential if kind == "prequential" else metrics)[key] = float(value)
            result = StepResult(batch.rows, float(values[0]), prequential, metrics)
            results.append(result)
            self.steps += 1
            self.examples += batch.rows
            self._last = result
        return results

    def evaluate(self, batch: Batch) -> Evaluation:
        """Loss and metrics over ``batch`` in inference mode; no update."""
        assert self._eval is not None, "load() first"
        for _, _, metric in self._eval_metrics:
            metric.reset_state()
        total = 0.0
        for start in range(0, batch.rows, EVAL_CHUNK_ROWS):
            chunk = batch.slice(start, min(start + EVAL_CHUNK_ROWS, batch.rows))
            total += float(self._eval(*_tensors(chunk)).numpy()) * chunk.rows
        metrics = {key: float(metric.result()) for key, _, metric in self._eval_metrics}
        return Evaluation(batch.rows, total / batch.rows, metrics)

    def save(self, path: Path) -> Snapshot:
        """Write the current weights (and compile config) as a .keras file; ``TrainingDiverged`` instead when a
        weight is NaN or infinite (a finite loss does not prove the weights are)."""
        for weight in self._model.weights:
            value = np.asarray(weight.numpy())
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise TrainingDiverged(
                    f"training diverged: weight {weight.path!r} holds NaN or infinite values after step {self.steps}; "
                    "the session publishes nothing more (whatever on_abort says)"
                )
        self._model.save(path)
        return Snapshot(self.steps, self.examples, self._last)

    def close(self) -> None:
        self._model = self._step = self._eval = None
        self._eval_metrics = []


def _first_line(error: BaseException) -> str:
    """A library error's first line, short: Keras and TensorFlow messages can carry whole graphs."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_trainable(version: ModelVersion) -> None:
    """Only Keras artifacts can be rebuilt as trainable models; a SavedModel is a frozen serving graph."""
    if version.format not in (ModelFormat.KERAS, ModelFormat.H5):
        raise FailedPrecondition(
            f"model {version.model_name!r} version {version.version} is a SavedModel, which cannot be trained "
            "online; upload it as .keras or .h5"
        )


def _verify_sha256(artifact: Path, version: ModelVersion) -> None:
    """The bytes must be the ones the registry inspected at upload (as the runtime Loader checks)."""
    digest = hashlib.sha256()
    with artifact.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != version.sha256:
        raise FailedPrecondition(
            f"model {version.model_name!r} version {version.version}: the stored artifact does not match its "
            "recorded sha256"
        )


def _label_spec(output: TensorSpec, task: Task) -> TensorSpec:
    """What a label for ``output`` looks like: the output itself, or class ids for sparse losses."""
    if task is Task.SPARSE and len(output.shape) >= 2:
        return TensorSpec(output.name, DType.INT64, output.shape[:-1])
    return output


def _tf_spec(spec: TensorSpec) -> tf.TensorSpec:
    return tf.TensorSpec([None if d < 0 else d for d in spec.shape], TF_DTYPES[spec.dtype])


def _tensors(batch: Batch) -> list[tf.Tensor]:
    return [tf.constant(a) for a in (*batch.features, *batch.labels)]


def _flat(function: Any) -> Callable[..., tf.Tensor]:
    """Call a ConcreteFunction through its flat entry point (the servables' fast path), else normally."""
    call_flat = getattr(getattr(function, "inference_fn", None), "call_flat", None)
    if call_flat is None:
        return lambda *tensors: function(*tensors)
    captures = tuple(function.captured_inputs)

    def call(*tensors: tf.Tensor) -> tf.Tensor:
        outputs = call_flat(*tensors, *captures)
        return outputs[0] if isinstance(outputs, list | tuple) else outputs

    return call


def _same_in_both_modes(model: Any) -> bool:
    """True when every layer is a Keras built-in known to compute the same in training and inference mode.

    An allow-list, compared by exact type: anything else (dropout, batch norm, noise, random augmentation,
    custom layers) gets the separate inference-mode pass, which is always correct, only slower.
    """
    import keras

    layers = keras.layers
    same = {
        layers.InputLayer,
        layers.Dense,
        layers.EinsumDense,
        layers.Embedding,
        layers.Activation,
        layers.ReLU,
        layers.LeakyReLU,
        layers.PReLU,
        layers.ELU,
        layers.Softmax,
        layers.Flatten,
        layers.Reshape,
        layers.Permute,
        layers.RepeatVector,
        layers.Concatenate,
        layers.Add,
        layers.Subtract,
        layers.Multiply,
        layers.Average,
        layers.Maximum,
        layers.Minimum,
        layers.Dot,
        layers.LayerNormalization,
        layers.Identity,
        layers.Conv1D,
        layers.Conv2D,
        layers.Conv3D,
        layers.MaxPooling1D,
        layers.MaxPooling2D,
        layers.AveragePooling1D,
        layers.AveragePooling2D,
        layers.GlobalAveragePooling1D,
        layers.GlobalAveragePooling2D,
        layers.GlobalMaxPooling1D,
        layers.GlobalMaxPooling2D,
        layers.Normalization,
        layers.Rescaling,
    }
    pending = list(model.layers)
    while pending:
        layer = pending.pop()
        if isinstance(layer, keras.Model) and type(layer).__module__.startswith("keras."):
            pending += layer.layers  # a nested Functional or Sequential model: look inside
        elif type(layer) not in same:
            return False
    return True
