"""Loading real models of every format and running their compiled serving function: the results must match
the model's own call to within 1e-5, for every supported dtype, single and multiple inputs and outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import models
from tests.runtime.helpers import LIMITS, load, version_of
from tt_server.errors import FailedPrecondition, Unavailable
from tt_server.formats.artifacts import ARTIFACT_SUFFIX
from tt_server.formats.inspect import inspect_artifact
from tt_server.runtime.loader import Loader
from tt_server.runtime.servable import zero_inputs
from tt_server.types import DType, ModelFormat, Signature, TensorSpec

RNG = np.random.default_rng(7)
TOLERANCE = 1e-5
SEQUENTIAL_SIGNATURE = Signature(
    inputs=(TensorSpec("seq_in", DType.FLOAT32, (-1, 3)),),
    outputs=(TensorSpec("logits", DType.FLOAT32, (-1, 2)),),
)
# One input per numeric dtype (cast and concatenated inside the model), a float and a bool output.
DTYPES = (DType.FLOAT16, DType.FLOAT32, DType.FLOAT64, DType.INT32, DType.INT64, DType.BOOL)
DTYPES_SIGNATURE = Signature(
    inputs=tuple(TensorSpec(f"in_{d.value}", d, (-1, 2)) for d in DTYPES),
    outputs=(TensorSpec("positive", DType.BOOL, (-1, 1)), TensorSpec("y", DType.FLOAT32, (-1, 1))),
)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servables")


def random_inputs(signature: Signature, rows: int) -> dict[str, np.ndarray]:
    arrays = {}
    for spec in signature.inputs:
        shape = (rows, *spec.shape[1:])
        if spec.dtype is DType.BOOL:
            arrays[spec.name] = RNG.random(shape) > 0.5
        elif spec.dtype.value.startswith("int"):
            arrays[spec.name] = RNG.integers(0, 10, shape).astype(spec.dtype.value)  # valid token ids
        else:
            arrays[spec.name] = (RNG.standard_normal(shape) * 3).astype(spec.dtype.value)
    return arrays


def assert_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(actual) == list(expected)
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        if want.dtype == bool:
            np.testing.assert_array_equal(got, want)
        else:
            assert np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))) <= TOLERANCE, name


def build_dtypes_model() -> keras.Model:
    inputs = [keras.Input((2,), dtype=d.value, name=f"in_{d.value}") for d in DTYPES]
    joined = keras.layers.Concatenate()([keras.ops.cast(t, "float32") for t in inputs])
    y = keras.layers.Dense(1, name="y_head")(keras.layers.Dense(8, activation="tanh")(joined))
    return keras.Model(inputs, {"y": y, "positive": keras.ops.greater(y, 0.0)})


@pytest.mark.parametrize("fmt", [ModelFormat.KERAS, ModelFormat.H5])
def test_mlp_matches_the_keras_call(out: Path, fmt: ModelFormat) -> None:
    model = models.build_mlp()
    path = out / f"mlp-match{ARTIFACT_SUFFIX[fmt]}"
    model.save(path)
    servable = load(path, fmt, models.MLP_SIGNATURE, out / "work")
    for rows in (1, 7, 300):
        x = random_inputs(models.MLP_SIGNATURE, rows)
        assert_close(servable.run(x), {"score": model(x["features"], training=False).numpy()})
    assert servable.batchable
    params = sum(int(np.prod(w.shape)) for w in model.weights)
    assert servable.estimated_bytes == 4 * params


@pytest.mark.parametrize("fmt", [ModelFormat.KERAS, ModelFormat.H5])
def test_multiple_inputs_and_dict_outputs(out: Path, fmt: ModelFormat) -> None:
    model = models.build_two_io()
    path = out / f"two_io{ARTIFACT_SUFFIX[fmt]}"
    model.save(path)
    servable = load(path, fmt, models.TWO_IO_SIGNATURE, out / "work")
    x = random_inputs(models.TWO_IO_SIGNATURE, 17)
    expected = model([x["a"], x["b"]], training=False)
    assert_close(servable.run(x), {"probs": expected["probs"].numpy(), "value": expected["value"].numpy()})


def test_every_numeric_dtype_and_a_bool_output(out: Path) -> None:
    model = build_dtypes_model()
    path = out / "dtypes.keras"
    model.save(path)
    servable = load(path, ModelFormat.KERAS, DTYPES_SIGNATURE, out / "work")
    x = random_inputs(DTYPES_SIGNATURE, 64)
    expected = model([x[s.name] for s in DTYPES_SIGNATURE.inputs], training=False)
    result = servable.run(x)
    assert_close(result, {"positive": expected["positive"].numpy(), "y": expected["y"].numpy()})
    assert result["positive"].any() and not result["positive"].all()  # a meaningful comparison


def test_sequential_model(out: Path) -> None:
    path = models.sequential_keras(out)
    model = keras.saving.load_model(path)
    servable = load(path, ModelFormat.KERAS, SEQUENTIAL_SIGNATURE, out / "work")
    x = random_inputs(SEQUENTIAL_SIGNATURE, 5)
    assert_close(servable.run(x), {"logits": model(x["seq_in"]).numpy()})


def test_exported_saved_model_with_two_inputs_and_outputs(out: Path) -> None:
    model = models.build_two_io()
    export = out / "two_io_export_own"
    model.export(str(export), verbose=False)
    path = models.pack_tar_gz(export, out / "two_io_own.tar.gz", top="two_io")
    servable = load(path, ModelFormat.SAVED_MODEL_TAR_GZ, models.TWO_IO_SIGNATURE, out / "work")
    x = random_inputs(models.TWO_IO_SIGNATURE, 9)
    expected = model([x["a"], x["b"]], training=False)
    assert_close(servable.run(x), {"probs": expected["probs"].numpy(), "value": expected["value"].numpy()})
    assert not list((out / "work" / "m-unpacked").glob("**/saved_model.pb"))  # unpacked files are gone


def test_plain_tf_module_saved_model_zip(out: Path) -> None:
    path = models.module_saved_model_zip(out)
    servable = load(path, ModelFormat.SAVED_MODEL_ZIP, models.MODULE_SIGNATURE, out / "work")
    x = random_inputs(models.MODULE_SIGNATURE, 4)
    expected = 1 / (1 + np.exp(-x["features"].sum(axis=1, keepdims=True)))  # w = ones, b = 0
    assert_close(servable.run(x), {"score": expected.astype(np.float32)})
    assert servable.estimated_bytes == 4 * (4 + 1)


def test_string_input_through_an_asset_vocabulary(out: Path) -> None:
    path = models.as_tar_gz(models.vocab_asset_saved_model_dir, out)
    signature = Signature((TensorSpec("color", DType.STRING, (-1,)),), (TensorSpec("index", DType.INT64, (-1,)),))
    servable = load(path, ModelFormat.SAVED_MODEL_TAR_GZ, signature, out / "work")
    colors = np.array([b"blue", b"red", b"mauve"], dtype=object)
    np.testing.assert_array_equal(servable.run({"color": colors})["index"], np.array([2, 0, -1]))


def test_fixed_batch_dims_make_a_servable_unbatchable(out: Path) -> None:
    class Fixed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"total": tf.reduce_sum(x, axis=1)}

    module = Fixed()
    tf.saved_model.save(module, str(out / "fixed_sm"), signatures={"serving_default": module.serve})
    path = models.pack_tar_gz(out / "fixed_sm", out / "fixed.tar.gz")
    signature = Signature((TensorSpec("x", DType.FLOAT32, (1, 4)),), (TensorSpec("total", DType.FLOAT32, (1,)),))
    servable = load(path, ModelFormat.SAVED_MODEL_TAR_GZ, signature, out / "work")
    assert not servable.batchable
    np.testing.assert_allclose(servable.run({"x": np.ones((1, 4), np.float32)})["total"], [4.0])


def test_unload_refuses_later_calls(out: Path) -> None:
    servable = load(models.mlp_keras(out), ModelFormat.KERAS, models.MLP_SIGNATURE, out / "work")
    x = random_inputs(models.MLP_SIGNATURE, 2)
    servable.run(x)
    servable.unload()
    with pytest.raises(Unavailable):
        servable.run(x)


def test_an_artifact_that_does_not_match_its_sha256_is_refused(out: Path) -> None:
    good = models.mlp_keras(out)
    record = version_of(good, ModelFormat.KERAS, models.MLP_SIGNATURE)
    other = out / "other.keras"
    models.build_mlp().save(other)  # same architecture, other weights
    with pytest.raises(FailedPrecondition, match="sha256"):
        Loader(record, other, out / "work", LIMITS).load()


def test_a_signature_that_does_not_match_the_model_is_refused_at_load(out: Path) -> None:
    wrong = Signature(models.MLP_SIGNATURE.inputs, (TensorSpec("score", DType.FLOAT64, (-1, 1)),))
    with pytest.raises(FailedPrecondition, match="output 'score' has dtype float32"):
        load(models.mlp_keras(out), ModelFormat.KERAS, wrong, out / "work")


def test_the_fast_call_path_equals_the_public_call(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flat entry point is TensorFlow API below ``ConcreteFunction.__call__``; without it the servable
    falls back to the public call, with identical results."""
    path = models.mlp_keras(out)
    fast = load(path, ModelFormat.KERAS, models.MLP_SIGNATURE, out / "work")
    from tt_server.runtime import servable as servable_module

    original = servable_module._flat_call
    monkeypatch.setattr(servable_module, "_flat_call", lambda function: original(_WithoutFlatCall(function)))
    slow = load(path, ModelFormat.KERAS, models.MLP_SIGNATURE, out / "work")
    x = random_inputs(models.MLP_SIGNATURE, 50)
    np.testing.assert_array_equal(fast.run(x)["score"], slow.run(x)["score"])


class _WithoutFlatCall:
    """A ConcreteFunction stand-in without ``inference_fn``."""

    def __init__(self, function: object) -> None:
        self._function = function

    def __call__(self, *tensors: tf.Tensor) -> object:
        return self._function(*tensors)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("build", "fmt"),
    [
        (models.mlp_keras, ModelFormat.KERAS),
        (models.mlp_h5, ModelFormat.H5),
        (models.two_io_keras, ModelFormat.KERAS),
        (models.two_io_h5, ModelFormat.H5),
        (models.sequential_keras, ModelFormat.KERAS),
        (models.custom_layer_keras, ModelFormat.KERAS),
        (models.mlp_saved_model_tar_gz, ModelFormat.SAVED_MODEL_TAR_GZ),
        (models.mlp_saved_model_zip, ModelFormat.SAVED_MODEL_ZIP),
        (models.module_saved_model_tar_gz, ModelFormat.SAVED_MODEL_TAR_GZ),
        (lambda out: models.as_tar_gz(models.two_io_export_dir, out), ModelFormat.SAVED_MODEL_TAR_GZ),
        (
            lambda out: models.as_tar_gz(models.vocab_asset_saved_model_dir, out),
            ModelFormat.SAVED_MODEL_TAR_GZ,
        ),
    ],
)
def test_every_accepted_artifact_serves_the_signature_the_registry_read(
    tmp_path: Path, build: Callable[[Path], Path], fmt: ModelFormat
) -> None:
    """The registry names and orders a model's tensors at upload; the loader must follow the same rules."""
    path = build(tmp_path)
    scratch = tmp_path / "inspect"
    scratch.mkdir()
    signature = inspect_artifact(path, fmt, scratch, LIMITS, frozenset({models.SCALE_LAYER}))
    servable = load(path, fmt, signature, tmp_path / "work")  # warm-up checks outputs against the signature
    result = servable.run(zero_inputs(signature, 3))
    assert list(result) == [spec.name for spec in signature.outputs]
