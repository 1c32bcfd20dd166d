"""Builders of small, real TensorFlow/Keras models and artifacts, good and bad, for the tests.

Plain functions, no fixtures: each takes an output directory, writes one artifact into it and returns its
path (``build_*`` return an in-memory model instead). Building is quick (well under a second each) but
importing TensorFlow is not, so test modules share what they build through module-scoped fixtures.

The signatures the good artifacts yield are listed in ``MLP_SIGNATURE`` / ``TWO_IO_SIGNATURE`` /
``MODULE_SIGNATURE``. TFaaS-style artifacts (frozen graphs, a colour classifier with class names) are at the end.
"""

from __future__ import annotations

import functools
import io
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from tt_server.types import DType, Signature, TensorSpec

MLP_SIGNATURE = Signature(
    inputs=(TensorSpec("features", DType.FLOAT32, (-1, 4)),),
    outputs=(TensorSpec("score", DType.FLOAT32, (-1, 1)),),
)
# model.export() names a single output "output_0".
MLP_EXPORT_SIGNATURE = Signature(inputs=MLP_SIGNATURE.inputs, outputs=(TensorSpec("output_0", DType.FLOAT32, (-1, 1)),))
TWO_IO_SIGNATURE = Signature(
    inputs=(TensorSpec("a", DType.FLOAT32, (-1, 3)), TensorSpec("b", DType.INT32, (-1, 2))),
    outputs=(TensorSpec("probs", DType.FLOAT32, (-1, 3)), TensorSpec("value", DType.FLOAT32, (-1, 1))),
)
MODULE_SIGNATURE = Signature(
    inputs=(TensorSpec("features", DType.FLOAT32, (-1, 4)),),
    outputs=(TensorSpec("score", DType.FLOAT32, (-1, 1)),),
)
SCALE_LAYER = "tests.models.ScaleLayer"  # the allow-list name of the custom layer below
PAYLOAD = b"pwned\n"


# --- Keras models ---------------------------------------------------------------------------------------


def build_mlp() -> keras.Model:
    """Input "features" (4,) -> Dense(8, relu) -> Dense(1, sigmoid) named "score"."""
    inputs = keras.Input(shape=(4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    score = keras.layers.Dense(1, activation="sigmoid", name="score")(hidden)
    return keras.Model(inputs, score, name="mlp")


def build_two_io() -> keras.Model:
    """Inputs a float32 (3,) and b int32 (2,) token ids; dict outputs "probs" (3, softmax) and "value" (1,).

    The output layers are named differently from the dict keys ("probs_head", "value_head"): callers see
    the keys, so the signature must too.
    """
    a = keras.Input(shape=(3,), name="a")
    b = keras.Input(shape=(2,), dtype="int32", name="b")
    # Embedding rather than keras.ops.cast: an op in a functional model becomes an unregistered "Cast"
    # layer that legacy .h5 loading cannot rebuild.
    tokens = keras.layers.Flatten(name="flat")(keras.layers.Embedding(10, 2, name="embed")(b))
    joined = keras.layers.Concatenate(name="joined")([a, tokens])
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(joined)
    probs = keras.layers.Dense(3, activation="softmax", name="probs_head")(hidden)
    value = keras.layers.Dense(1, name="value_head")(hidden)
    return keras.Model([a, b], {"value": value, "probs": probs}, name="two_io")


@keras.saving.register_keras_serializable(package="tests")
class ScaleLayer(keras.layers.Layer):
    """A custom layer: multiplies by a constant factor."""

    def __init__(self, factor: float = 2.0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x: object) -> object:
        return x * self.factor

    def get_config(self) -> dict:
        return {**super().get_config(), "factor": self.factor}


def build_custom_layer_model() -> keras.Model:
    inputs = keras.Input(shape=(4,), name="features")
    return keras.Model(inputs, ScaleLayer(name="scale")(inputs), name="custom")


def build_lambda_model() -> keras.Model:
    inputs = keras.Input(shape=(4,), name="features")
    return keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs))


def mlp_keras(out_dir: Path) -> Path:
    return _save(build_mlp(), out_dir / "mlp.keras")


def mlp_h5(out_dir: Path) -> Path:
    return _save(build_mlp(), out_dir / "mlp.h5")


def two_io_keras(out_dir: Path) -> Path:
    return _save(build_two_io(), out_dir / "two_io.keras")


def two_io_h5(out_dir: Path) -> Path:
    return _save(build_two_io(), out_dir / "two_io.h5")


def sequential_keras(out_dir: Path) -> Path:
    """A Sequential model built with keras.Input(name="seq_in"); its output is named by its last layer."""
    model = keras.Sequential([keras.Input(shape=(3,), name="seq_in"), keras.layers.Dense(2, name="logits")])
    return _save(model, out_dir / "sequential.keras")


def unbuilt_sequential_keras(out_dir: Path) -> Path:
    """A Sequential model never built: it has no input shape."""
    return _save(keras.Sequential([keras.layers.Dense(2)]), out_dir / "unbuilt.keras")


def bfloat16_keras(out_dir: Path) -> Path:
    """A model whose input dtype (bfloat16) the API cannot carry."""
    inputs = keras.Input(shape=(2,), dtype="bfloat16", name="half")
    return _save(keras.Model(inputs, keras.layers.Dense(1, name="out")(inputs)), out_dir / "bfloat16.keras")


def lambda_keras(out_dir: Path) -> Path:
    return _save(build_lambda_model(), out_dir / "lambda.keras")


def lambda_h5(out_dir: Path) -> Path:
    return _save(build_lambda_model(), out_dir / "lambda.h5")


def custom_layer_keras(out_dir: Path) -> Path:
    return _save(build_custom_layer_model(), out_dir / "custom.keras")


def custom_layer_h5(out_dir: Path) -> Path:
    return _save(build_custom_layer_model(), out_dir / "custom.h5")


def weights_only_h5(out_dir: Path) -> Path:
    """An HDF5 file with weights but no model config (``save_weights``)."""
    target = out_dir / "weights_only.h5"
    scratch = out_dir / "weights_only.weights.h5"  # Keras insists on this suffix
    build_mlp().save_weights(scratch)
    scratch.rename(target)
    return target


def truncated_keras(out_dir: Path) -> Path:
    """The first half of a .keras file: the zip's central directory is gone."""
    source = mlp_keras(out_dir)
    target = out_dir / "truncated.keras"
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return target


def corrupt_weights_keras(out_dir: Path) -> Path:
    """A well-formed .keras zip whose model.weights.h5 is garbage."""
    source = mlp_keras(out_dir)
    target = out_dir / "corrupt_weights.keras"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = b"garbage" * 100 if info.filename.endswith(".h5") else src.read(info)
            dst.writestr(info.filename, data)
    return target


def external_storage_h5(out_dir: Path) -> Path:
    """A valid .h5 model with one extra dataset whose bytes live in another file on disk."""
    import h5py

    target = mlp_h5(out_dir).rename(out_dir / "external.h5")
    with h5py.File(target, "a") as f:
        f.create_dataset("leak", (16,), dtype="u1", external=[("/etc/hostname", 0, 16)])
    return target


def external_link_h5(out_dir: Path) -> Path:
    """A valid .h5 model with an HDF5 external link to another file."""
    import h5py

    target = mlp_h5(out_dir).rename(out_dir / "external_link.h5")
    with h5py.File(target, "a") as f:
        f["leak"] = h5py.ExternalLink("/var/lib/other-model.h5", "/")
    return target


def external_storage_keras(out_dir: Path) -> Path:
    """A .keras file whose model.weights.h5 holds a dataset stored in another file on disk."""
    import h5py

    source = mlp_keras(out_dir)
    target = out_dir / "external.keras"
    weights = out_dir / "model.weights.h5"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "model.weights.h5":
                weights.write_bytes(data)
                with h5py.File(weights, "a") as f:
                    f.create_dataset("leak", (16,), dtype="u1", external=[("/etc/hostname", 0, 16)])
                data = weights.read_bytes()
            dst.writestr(info.filename, data)
    return target


def _save(model: keras.Model, target: Path) -> Path:
    model.save(target)
    return target


# --- SavedModels ----------------------------------------------------------------------------------------


class ScorerModule(tf.Module):
    """A plain tf.Module (no Keras) with a ``serve`` tf.function: the classic SavedModel."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(tf.ones((4, 1)), name="w")
        self.b = tf.Variable(tf.zeros((1,)), name="b")

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])
    def serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"score": tf.sigmoid(tf.matmul(features, self.w) + self.b)}


def module_saved_model_dir(out_dir: Path) -> Path:
    module = ScorerModule()
    target = out_dir / "module_sm"
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})
    return target


def mlp_export_dir(out_dir: Path) -> Path:
    """``model.export()`` of the MLP (signatures "serve" and "serving_default")."""
    target = out_dir / "mlp_export"
    build_mlp().export(str(target), verbose=False)
    return target


def two_io_export_dir(out_dir: Path) -> Path:
    target = out_dir / "two_io_export"
    build_two_io().export(str(target), verbose=False)
    return target


def vocab_asset_saved_model_dir(out_dir: Path) -> Path:
    """A lookup table initialised from a vocabulary file packaged as an asset: legitimate."""
    vocab = out_dir / "vocab.txt"
    vocab.write_text("red\ngreen\nblue\n")

    class Vocab(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            initializer = tf.lookup.TextFileInitializer(
                str(vocab),
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            )
            self.table = tf.lookup.StaticHashTable(initializer, default_value=-1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="color")])
        def serve(self, color: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"index": self.table.lookup(color)}

    module = Vocab()
    target = out_dir / "vocab_sm"
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})
    return target


def no_serving_default_saved_model_dir(out_dir: Path) -> Path:
    module = ScorerModule()
    target = out_dir / "no_default_sm"
    tf.saved_model.save(module, str(target), signatures={"predict": module.serve})
    return target


_X = tf.TensorSpec([None, 4], tf.float32, name="x")


def _function_saved_model(target: Path, serve: Callable, extra: Callable | None = None) -> Path:
    """Save a module whose serving_default runs ``serve``; ``extra`` is kept as a second, unexported
    tf.function (it lands in the function library without being reachable from any signature)."""
    module = tf.Module()
    module.serve = tf.function(serve, input_signature=[_X])
    if extra is not None:
        module.extra = tf.function(extra, input_signature=[_X])
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})
    return target


def read_file_saved_model_dir(out_dir: Path) -> Path:
    """serving_default reads /etc/hostname with tf.io.read_file."""

    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        size = tf.strings.length(tf.io.read_file("/etc/hostname"))
        return {"y": x + tf.cast(size, tf.float32)}

    return _function_saved_model(out_dir / "read_file_sm", serve)


def write_file_saved_model_dir(out_dir: Path) -> Path:
    """serving_default writes a file with tf.io.write_file."""

    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.control_dependencies([tf.io.write_file("/tmp/tt-test-pwned", PAYLOAD)]):
            return {"y": tf.identity(x)}

    return _function_saved_model(out_dir / "write_file_sm", serve)


def nested_read_file_saved_model_dir(out_dir: Path) -> Path:
    """serving_default calls a nested tf.function ("leak") that reads a file."""

    @tf.function
    def leak() -> tf.Tensor:
        return tf.strings.length(tf.io.read_file("/etc/hostname"))

    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x + tf.cast(leak(), tf.float32)}

    return _function_saved_model(out_dir / "nested_read_file_sm", serve)


def unreachable_write_file_saved_model_dir(out_dir: Path) -> Path:
    """A clean serving_default plus an unexported tf.function that writes a file."""

    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * 2.0}

    def extra(x: tf.Tensor) -> tf.Tensor:
        with tf.control_dependencies([tf.io.write_file("/tmp/tt-test-pwned", PAYLOAD)]):
            return tf.identity(x)

    return _function_saved_model(out_dir / "unreachable_write_sm", serve, extra)


def save_v2_saved_model_dir(out_dir: Path) -> Path:
    """serving_default writes a checkpoint (SaveV2): a checkpoint op where checkpoint ops never belong."""

    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        save = tf.raw_ops.SaveV2(prefix="/tmp/tt-test-ckpt", tensor_names=["x"], shape_and_slices=[""], tensors=[x])
        with tf.control_dependencies([save]):
            return {"y": tf.identity(x)}

    return _function_saved_model(out_dir / "save_v2_sm", serve)


def print_to_file_saved_model_dir(out_dir: Path) -> Path:
    """serving_default prints to a file (PrintV2 with output_stream=file://...)."""

    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.control_dependencies([tf.print(x, output_stream="file:///tmp/tt-test-print")]):
            return {"y": tf.identity(x)}

    return _function_saved_model(out_dir / "print_file_sm", serve)


def const_path_table_saved_model_dir(out_dir: Path) -> Path:
    """serving_default fills a lookup table from /etc/passwd: a text-file table that is no asset."""

    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        table = tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.int64)
        init = tf.raw_ops.InitializeTableFromTextFileV2(
            table_handle=table, filename=tf.constant("/etc/passwd"), key_index=-2, value_index=-1
        )
        with tf.control_dependencies([init]):
            size = tf.raw_ops.LookupTableSizeV2(table_handle=table)
        return {"y": x + tf.cast(size, tf.float32)}

    return _function_saved_model(out_dir / "const_table_sm", serve)


# --- archives -------------------------------------------------------------------------------------------


def pack_tar_gz(src_dir: Path, target: Path, top: str | None = None) -> Path:
    """Pack a directory's content as .tar.gz, at the archive's top level or under the folder ``top``."""
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(src_dir.rglob("*")):
            rel = path.relative_to(src_dir).as_posix()
            tar.add(path, arcname=f"{top}/{rel}" if top else rel, recursive=False)
    return target


def pack_zip(src_dir: Path, target: Path, top: str | None = None) -> Path:
    """Pack a directory's content as .zip, at the archive's top level or under the folder ``top``."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(src_dir.rglob("*")):
            rel = path.relative_to(src_dir).as_posix()
            zf.write(path, f"{top}/{rel}" if top else rel)
    return target


def mlp_saved_model_tar_gz(out_dir: Path) -> Path:
    """The exported MLP under a top directory "mlp/"."""
    return pack_tar_gz(mlp_export_dir(out_dir), out_dir / "mlp_sm.tar.gz", top="mlp")


def mlp_saved_model_zip(out_dir: Path) -> Path:
    """The exported MLP at the zip's top level."""
    return pack_zip(mlp_export_dir(out_dir), out_dir / "mlp_sm.zip")


def module_saved_model_tar_gz(out_dir: Path) -> Path:
    return pack_tar_gz(module_saved_model_dir(out_dir), out_dir / "module_sm.tar.gz")


def module_saved_model_zip(out_dir: Path) -> Path:
    return pack_zip(module_saved_model_dir(out_dir), out_dir / "module_sm.zip", top="module")


def as_tar_gz(build_dir: Callable[[Path], Path], out_dir: Path) -> Path:
    """Build a SavedModel directory with ``build_dir`` and pack it as ``<dir name>.tar.gz``."""
    src = build_dir(out_dir)
    return pack_tar_gz(src, out_dir / f"{src.name}.tar.gz")


def tar_gz_with(out_dir: Path, name: str, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A tar.gz holding a harmless saved_model.pb, then ``member`` (a crafted header) with ``data``."""
    target = out_dir / name
    with tarfile.open(target, "w:gz") as tar:
        _add_bytes(tar, "saved_model.pb", b"")
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return target


def zip_with(out_dir: Path, name: str, member: zipfile.ZipInfo, data: bytes = b"") -> Path:
    """A zip holding a harmless saved_model.pb, then ``member`` (a crafted entry) with ``data``."""
    target = out_dir / name
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("saved_model.pb", b"")
        zf.writestr(member, data, compress_type=zipfile.ZIP_DEFLATED)
    return target


def zip_slip_zip(out_dir: Path) -> Path:
    return zip_with(out_dir, "slip.zip", zipfile.ZipInfo("../evil"), PAYLOAD)


def zip_slip_tar_gz(out_dir: Path) -> Path:
    return tar_gz_with(out_dir, "slip.tar.gz", tarfile.TarInfo("model/../../evil"), PAYLOAD)


def absolute_path_tar_gz(out_dir: Path) -> Path:
    return tar_gz_with(out_dir, "absolute.tar.gz", tarfile.TarInfo("/tmp/tt-test-evil"), PAYLOAD)


def absolute_path_zip(out_dir: Path) -> Path:
    return zip_with(out_dir, "absolute.zip", zipfile.ZipInfo("/tmp/tt-test-evil"), PAYLOAD)


def symlink_tar_gz(out_dir: Path) -> Path:
    link = tarfile.TarInfo("variables")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc"
    return tar_gz_with(out_dir, "symlink.tar.gz", link)


def hardlink_tar_gz(out_dir: Path) -> Path:
    link = tarfile.TarInfo("passwd")
    link.type = tarfile.LNKTYPE
    link.linkname = "/etc/passwd"
    return tar_gz_with(out_dir, "hardlink.tar.gz", link)


def device_tar_gz(out_dir: Path) -> Path:
    device = tarfile.TarInfo("null")
    device.type = tarfile.CHRTYPE
    device.devmajor, device.devminor = 1, 3
    return tar_gz_with(out_dir, "device.tar.gz", device)


def fifo_tar_gz(out_dir: Path) -> Path:
    fifo = tarfile.TarInfo("pipe")
    fifo.type = tarfile.FIFOTYPE
    return tar_gz_with(out_dir, "fifo.tar.gz", fifo)


def symlink_zip(out_dir: Path) -> Path:
    link = zipfile.ZipInfo("variables")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16  # how Info-ZIP stores a symlink; data = target
    return zip_with(out_dir, "symlink.zip", link, b"/etc")


def zip_bomb_zip(out_dir: Path, size: int = 8 << 20) -> Path:
    """``size`` zero bytes deflated to a few KiB: a compression ratio around 1000."""
    return zip_with(out_dir, "bomb.zip", zipfile.ZipInfo("variables/variables.data-00000-of-00001"), bytes(size))


def tar_gz_bomb(out_dir: Path, size: int = 8 << 20) -> Path:
    target = out_dir / "bomb.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        _add_bytes(tar, "saved_model.pb", b"")
        _add_bytes(tar, "variables/variables.data-00000-of-00001", bytes(size))
    return target


def many_members_zip(out_dir: Path, count: int) -> Path:
    target = out_dir / f"many_{count}.zip"
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr("saved_model.pb", b"")
        for i in range(count - 1):
            zf.writestr(f"assets/{i}.txt", b"")
    return target


def saved_model_tar_gz(build_dir: Callable[[Path], Path]) -> Callable[[Path], Path]:
    """A builder packing what the directory builder ``build_dir`` builds as a .tar.gz."""
    return functools.partial(as_tar_gz, build_dir)


def cached_builds(root: Path) -> Callable[[Callable[[Path], Path]], Path]:
    """Memoise builders: ``build(builder)`` runs each builder once, in a fresh directory under ``root``."""
    cache: dict[Callable[[Path], Path], Path] = {}

    def build(builder: Callable[[Path], Path]) -> Path:
        if builder not in cache:
            out = root / str(len(cache))
            out.mkdir()
            cache[builder] = builder(out)
        return cache[builder]

    return build


def copy_to(src: Path, target: Path) -> Path:
    """Copy ``src`` to ``target`` (e.g. to drop the file extension, as uploads are spooled without one)."""
    shutil.copyfile(src, target)
    return target


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


# --- TFaaS: frozen graphs and an image classifier --------------------------------------------------------

# Node names as TFaaS's Keras-to-TF converter makes them.
FROZEN_INPUT = "dense_1_input"
FROZEN_OUTPUT = "output_node0"
COLOURS = ("red", "green", "blue")
COLOUR_SIZE = 16  # the colour classifier's input is COLOUR_SIZE x COLOUR_SIZE RGB


def freeze(model: keras.Model, input_node: str = FROZEN_INPUT, output_node: str = FROZEN_OUTPUT) -> tf.Graph:
    """``model`` as a TF1-style frozen graph: Placeholder ``input_node`` -> ... -> Identity ``output_node``,
    variables folded into constants (``convert_variables_to_constants_v2``). Returns the graph; its
    ``as_graph_def()`` is what a ``.pb`` holds."""
    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], model.inputs[0].dtype, name=input_node)

    @tf.function(autograph=False)
    def serve(x: tf.Tensor) -> tf.Tensor:
        return tf.identity(model(x, training=False), name=output_node)

    return convert_variables_to_constants_v2(serve.get_concrete_function(spec)).graph


def mlp_frozen_graph(out_dir: Path) -> Path:
    """The MLP frozen into ``mlp.pb`` (input ``dense_1_input`` (4,), output ``output_node0`` (1,))."""
    target = out_dir / "mlp.pb"
    target.write_bytes(freeze(build_mlp()).as_graph_def().SerializeToString())
    return target


def _tf1_graph_pb(target: Path, build: Callable[[tf.Tensor], tf.Tensor]) -> Path:
    """A hand-made TF1 graph: Placeholder ``dense_1_input`` [None, 4] -> ``build`` -> Identity ``output_node0``."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name=FROZEN_INPUT)
        tf.identity(build(x), name=FROZEN_OUTPUT)
    target.write_bytes(graph.as_graph_def().SerializeToString())
    return target


def write_file_frozen_graph(out_dir: Path) -> Path:
    """A frozen graph whose output waits for a WriteFile: serving it would write a file on the server."""

    def build(x: tf.Tensor) -> tf.Tensor:
        write = tf.io.write_file("/tmp/tt-pwned", tf.strings.as_string(tf.reduce_sum(x)))
        with tf.control_dependencies([write]):
            return tf.identity(x)

    return _tf1_graph_pb(out_dir / "write_file.pb", build)


def two_placeholder_frozen_graph(out_dir: Path) -> Path:
    """Output ``output_node0`` = ``dense_1_input`` + Placeholder ``other``: naming only one input cannot work."""

    def build(x: tf.Tensor) -> tf.Tensor:
        return x + tf.compat.v1.placeholder(tf.float32, [None, 4], name="other")

    return _tf1_graph_pb(out_dir / "two_placeholders.pb", build)


def build_colour_classifier() -> keras.Model:
    """Input "image" (16, 16, 3) pixels in 0..1 -> mean colour -> softmax over red, green, blue (``COLOURS``).

    Weights set by hand (10 x identity), so the answer is known without training: the dominant channel wins.
    """
    inputs = keras.Input(shape=(COLOUR_SIZE, COLOUR_SIZE, 3), name="image")
    mean = keras.layers.GlobalAveragePooling2D(name="mean_colour")(inputs)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(mean)
    model = keras.Model(inputs, probs, name="colours")
    model.get_layer("probs").set_weights([np.eye(3, dtype=np.float32) * 10, np.zeros(3, np.float32)])
    return model


def colour_classifier_keras(out_dir: Path) -> Path:
    return _save(build_colour_classifier(), out_dir / "colours.keras")
