"""inspect_artifact on real models, the Keras config walk, and the SavedModel op scan."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

from tests import models
from tt_server.errors import FailedPrecondition, InvalidArgument
from tt_server.formats.artifacts import ArchiveLimits, detect_format
from tt_server.formats.inspect import check_config_classes, inspect_artifact
from tt_server.formats.safety import scan_saved_model
from tt_server.types import DType, Signature, TensorSpec

Builder = Callable[[Path], Path]
Build = Callable[[Builder], Path]  # the `build` fixture
LIMITS = ArchiveLimits(max_members=100, max_unpacked_bytes=64 << 20, max_ratio=200.0)
NONE: frozenset[str] = frozenset()


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """Build an artifact once per module (see models.cached_builds)."""
    return models.cached_builds(tmp_path_factory.mktemp("inspect"))


def inspect(path: Path, work_dir: Path, allowed: frozenset[str] = NONE) -> Signature:
    return inspect_artifact(path, detect_format(path, None), work_dir, LIMITS, allowed)


# --- signatures of good models --------------------------------------------------------------------------

SEQUENTIAL_SIGNATURE = Signature(
    inputs=(TensorSpec("seq_in", DType.FLOAT32, (-1, 3)),),
    outputs=(TensorSpec("logits", DType.FLOAT32, (-1, 2)),),
)
VOCAB_SIGNATURE = Signature(
    inputs=(TensorSpec("color", DType.STRING, (-1,)),),
    outputs=(TensorSpec("index", DType.INT64, (-1,)),),
)


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        (models.mlp_keras, models.MLP_SIGNATURE),
        (models.mlp_h5, models.MLP_SIGNATURE),
        (models.two_io_keras, models.TWO_IO_SIGNATURE),
        (models.two_io_h5, models.TWO_IO_SIGNATURE),
        (models.sequential_keras, SEQUENTIAL_SIGNATURE),
        (models.mlp_saved_model_tar_gz, models.MLP_EXPORT_SIGNATURE),
        (models.mlp_saved_model_zip, models.MLP_EXPORT_SIGNATURE),
        (models.saved_model_tar_gz(models.two_io_export_dir), models.TWO_IO_SIGNATURE),
        (models.module_saved_model_tar_gz, models.MODULE_SIGNATURE),
        (models.module_saved_model_zip, models.MODULE_SIGNATURE),
        (models.saved_model_tar_gz(models.vocab_asset_saved_model_dir), VOCAB_SIGNATURE),
    ],
    ids=[
        "mlp.keras",
        "mlp.h5",
        "two_io.keras",
        "two_io.h5",
        "sequential.keras",
        "mlp_export.tar.gz",
        "mlp_export.zip",
        "two_io_export.tar.gz",
        "module.tar.gz",
        "module.zip",
        "vocab_asset.tar.gz",
    ],
)
def test_reads_signature(build: Build, tmp_path: Path, builder: Builder, expected: Signature) -> None:
    # Uploads are spooled without an extension; Keras picks its loader by extension, inspect copes.
    blob = models.copy_to(build(builder), tmp_path / "blob")
    assert inspect(blob, tmp_path) == expected


def test_allowed_custom_layer_loads(build: Build, tmp_path: Path) -> None:
    expected = Signature(
        inputs=(TensorSpec("features", DType.FLOAT32, (-1, 4)),),
        outputs=(TensorSpec("scale", DType.FLOAT32, (-1, 4)),),
    )
    allowed = frozenset({models.SCALE_LAYER})
    assert inspect(build(models.custom_layer_keras), tmp_path, allowed) == expected
    assert inspect(build(models.custom_layer_h5), tmp_path, allowed) == expected


# --- refused Keras models -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        (models.lambda_keras, "the model uses a Lambda layer (layer 'double')"),
        (models.lambda_h5, "the model uses a Lambda layer (layer 'double')"),
        (models.custom_layer_keras, "custom object 'tests.models.ScaleLayer' (layer 'scale')"),
        (models.custom_layer_h5, "custom object 'tests>ScaleLayer' (layer 'scale')"),
        (models.unbuilt_sequential_keras, "model has no input shape; build it with keras.Input"),
        (models.bfloat16_keras, "tensor 'half' has dtype bfloat16, which is not supported"),
        (models.external_storage_h5, "dataset 'leak' is stored in other files"),
        (models.external_link_h5, "'leak' links to another file"),
        (models.external_storage_keras, "model.weights.h5: dataset 'leak' is stored in other files"),
    ],
)
def test_refuses_unsafe_or_unservable_keras_models(
    build: Build, tmp_path: Path, builder: Builder, message: str
) -> None:
    with pytest.raises(FailedPrecondition) as info:
        inspect(build(builder), tmp_path)
    assert message in info.value.message


def test_allowing_lambda_still_refuses_python_bytecode(build: Build, tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"Python lambda \(bytecode\)"):
        inspect(build(models.lambda_keras), tmp_path, frozenset({"keras.layers.Lambda"}))


def test_weights_only_h5_is_invalid(build: Build, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        inspect(build(models.weights_only_h5), tmp_path)
    assert info.value.violations[0].field == "artifact"
    assert info.value.violations[0].description == (
        "the .h5 file holds weights only, no model config: save with model.save('x.h5')"
    )


def test_corrupt_keras_weights_are_invalid(build: Build, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        inspect(build(models.corrupt_weights_keras), tmp_path)
    assert info.value.violations[0].field == "artifact"
    assert "truncated or corrupt" in info.value.message


# --- the Keras config walk ------------------------------------------------------------------------------


def keras_object(module: str | None, class_name: str, config: object = None, **extra: object) -> dict:
    return {
        "module": module,
        "class_name": class_name,
        "config": config or {},
        "registered_name": None,
        **extra,
    }


@pytest.mark.parametrize(
    "config",
    [
        keras_object("keras.layers", "Dense", {"name": "d", "units": 2}),
        keras_object("keras.src.models.functional", "Functional", {"layers": []}),
        keras_object("keras.layers", "StringLookup", {"vocabulary": ["a", "b"]}),
        {
            "module": "keras.activations",
            "class_name": "function",
            "config": "relu",
            "registered_name": "relu",
        },
        {"module": "builtins", "class_name": "function", "config": "relu", "registered_name": None},
        {"class_name": "Dense", "config": {"units": 2}},  # legacy .h5 style: no module at all
        {"class_name": "__keras_tensor__", "config": {"shape": [None, 2], "dtype": "float32"}},
        {"class_name": "__typespec__", "module": "tensorflow.python.framework.tensor", "config": []},
        # load_model(compile=False) never reads the top-level compile config
        {**keras_object("keras.models", "Sequential"), "compile_config": keras_object("mypkg", "FocalLoss")},
    ],
)
def test_config_walk_accepts_builtins(config: dict) -> None:
    check_config_classes(config, NONE)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (keras_object("keras.layers", "TFSMLayer", {"name": "sm"}), "TFSMLayer (layer 'sm'), which loads"),
        (
            keras_object("keras.layers", "StringLookup", {"name": "lookup", "vocabulary": "/etc/passwd"}),
            "StringLookup (layer 'lookup') reads its vocabulary from a file",
        ),
        (keras_object("keras_hub.layers", "Anything"), "custom object 'keras_hub.layers.Anything'"),
        (keras_object("mypkg", "function", "swish2", registered_name="mypkg>swish2"), "'mypkg.swish2'"),
        ({"class_name": "__typespec__", "module": "mypkg", "config": []}, "non-TensorFlow type spec"),
        ({"class_name": "__lambda__", "config": {"code": "4wEA"}}, "Python lambda"),
        ({"class_name": "mypkg>Evil", "config": {}}, "custom object 'mypkg>Evil'"),  # legacy custom
        # Deep inside: a nested model's own compile config is deserialized, so it is checked.
        (
            {"layers": [{**keras_object("keras.models", "Sequential"), "compile_config": keras_object("x", "L")}]},
            "custom object 'x.L'",
        ),
    ],
)
def test_config_walk_refuses_code_and_files(config: dict, message: str) -> None:
    with pytest.raises(FailedPrecondition) as info:
        check_config_classes(config, NONE)
    assert message in info.value.message


def test_config_walk_follows_registered_name_not_module() -> None:
    # Keras resolves the registered name first: this "Dense" would really build ScaleLayer.
    disguised = keras_object("keras.layers", "Dense", {"name": "d"}, registered_name="tests>ScaleLayer")
    with pytest.raises(FailedPrecondition, match="custom object"):
        check_config_classes(disguised, NONE)
    check_config_classes(disguised, frozenset({models.SCALE_LAYER}))


# --- SavedModels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "pattern"),
    [
        (
            models.read_file_saved_model_dir,
            r"op ReadFile \(reads files\) in function '__inference_serve_\d+'",
        ),
        (
            models.write_file_saved_model_dir,
            r"op WriteFile \(writes files\) in function '__inference_serve_\d+'",
        ),
        (
            models.nested_read_file_saved_model_dir,
            r"op ReadFile \(reads files\) in function '__inference_leak_\d+'",
        ),
        (models.unreachable_write_file_saved_model_dir, r"op WriteFile .* function '__inference_extra_\d+'"),
        (
            models.save_v2_saved_model_dir,
            r"op SaveV2 .* '__inference_serve_\d+' .*, which runs when the model",
        ),
        (models.print_to_file_saved_model_dir, r"op PrintV2 \(prints to 'file:///tmp/tt-test-print'\)"),
        (models.const_path_table_saved_model_dir, r"InitializeTableFromTextFileV2 \(reads a file named by a"),
    ],
    ids=[
        "read_file",
        "write_file",
        "nested_read_file",
        "unreachable_write",
        "save_v2",
        "print_file",
        "const_table",
    ],
)
def test_refuses_saved_models_that_touch_files(build: Build, tmp_path: Path, builder: Builder, pattern: str) -> None:
    with pytest.raises(FailedPrecondition, match=pattern) as info:
        inspect(build(models.saved_model_tar_gz(builder)), tmp_path)
    assert info.value.message.startswith("unsafe SavedModel: ")
    assert not Path("/tmp/tt-test-pwned").exists()


def test_saved_model_needs_serving_default(build: Build, tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as info:
        inspect(build(models.saved_model_tar_gz(models.no_serving_default_saved_model_dir)), tmp_path)
    assert info.value.message == "SavedModel has no serving_default signature"


def test_unsafe_archive_is_refused_by_inspect(build: Build, tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="points outside the archive"):
        inspect(build(models.zip_slip_tar_gz), tmp_path)


def test_corrupt_saved_model_pb_is_invalid(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "saved_model.pb").write_bytes(b"\x0a\xff\xff\xff\x0f")  # a length past the end
    archive = models.pack_tar_gz(model_dir, tmp_path / "bad.tar.gz")
    with pytest.raises(InvalidArgument) as info:
        inspect(archive, tmp_path)
    assert info.value.violations[0].description.startswith("saved_model.pb is truncated or corrupt:")


def test_unloadable_saved_model_gives_a_short_message(tmp_path: Path) -> None:
    model_dir = models.module_saved_model_dir(tmp_path)
    for path in (model_dir / "variables").iterdir():
        path.unlink()  # the graph is fine, its weights are gone
    archive = models.pack_tar_gz(model_dir, tmp_path / "no_vars.tar.gz")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InvalidArgument) as info:
        inspect(archive, work)
    description = info.value.violations[0].description
    assert description.startswith("the SavedModel could not be loaded; is it truncated or corrupt?")
    assert "\n" not in description and len(description) < 300


# --- the op scan, on hand-written graphs ----------------------------------------------------------------


def saved_model(text: str) -> saved_model_pb2.SavedModel:
    return text_format.Parse(text, saved_model_pb2.SavedModel())


def serving(graph: str, *, outputs: str = '"y:0"', extra: str = "") -> saved_model_pb2.SavedModel:
    """One meta graph whose serving_default outputs ``outputs`` (tensor names)."""
    output_fields = "".join(
        f'outputs {{ key: "o{i}" value {{ name: {name} }} }}' for i, name in enumerate(outputs.split(","))
    )
    return saved_model(
        f"meta_graphs {{ graph_def {{ {graph} }}"
        f' signature_def {{ key: "serving_default" value {{ {output_fields} }} }} {extra} }}'
    )


def node(name: str, op: str, *inputs: str, attrs: str = "") -> str:
    return f'node {{ name: "{name}" op: "{op}" {" ".join(f"input: {i!r}" for i in inputs)} {attrs} }}'


def function(name: str, *nodes: str) -> str:
    body = " ".join(n.replace("node {", "node_def {", 1) for n in nodes)
    return f'function {{ signature {{ name: "{name}" }} {body} }}'


def library(*functions: str) -> str:
    return f" library {{ {' '.join(functions)} }}"


def func_attr(key: str, fn: str, nested: str = "") -> str:
    return f'attr {{ key: "{key}" value {{ func {{ name: "{fn}" {nested} }} }} }}'


def call(name: str, fn: str, *inputs: str) -> str:
    return node(name, "StatefulPartitionedCall", *inputs, attrs=func_attr("f", fn))


def string_attr(key: str, value: str) -> str:
    return f'attr {{ key: "{key}" value {{ s: "{value}" }} }}'


@pytest.mark.parametrize(
    ("op", "reason"),
    [
        ("ReadFile", "reads files"),
        ("MatchingFiles", "reads files"),
        ("ImmutableConst", "reads files"),
        ("TFRecordDataset", "reads files"),
        ("TFRecordReaderV2", "reads files"),
        ("WholeFileReader", "reads files"),
        ("ReaderReadUpToV2", "reads files"),
        ("WriteFile", "writes files"),
        ("CreateSummaryFileWriter", "writes files"),
        ("SaveDatasetV2", "writes files"),
        ("CacheDatasetV2", "writes files"),
        ("DebugIdentityV2", "writes debug dumps to files or the network"),
        ("PyFunc", "runs Python code"),
        ("EagerPyFunc", "runs Python code"),
        ("RpcClient", "talks to other processes"),
        ("DataServiceDatasetV4", "talks to other processes"),
        ("CollectiveReduceV2", "talks to other processes"),
        ("FileSystemSetConfiguration", "changes filesystem settings"),
    ],
)
def test_scan_denies_op_anywhere(op: str, reason: str) -> None:
    # In a function nothing calls, and in the main graph off every signature's path.
    in_library = serving(node("y", "Const") + library(function("unused", node("bad", op))))
    with pytest.raises(FailedPrecondition, match=rf"op {op} \({reason}\) in function 'unused' \(node 'bad'\)"):
        scan_saved_model(in_library)
    in_graph = serving(node("y", "Const") + node("bad", op))
    with pytest.raises(FailedPrecondition, match=rf"op {op} \({reason}\) in graph node 'bad'"):
        scan_saved_model(in_graph)


@pytest.mark.parametrize(
    "attrs",
    [
        "",  # PrintV2 defaults to stderr
        string_attr("output_stream", "stderr"),
        string_attr("output_stream", "log(info)"),
    ],
)
def test_scan_allows_printing_to_logs(attrs: str) -> None:
    scan_saved_model(serving(node("y", "PrintV2", "x", attrs=attrs)))


@pytest.mark.parametrize(
    ("op", "attrs", "allowed"),
    [
        ("PrintV2", string_attr("output_stream", "file:///var/log/x"), False),
        ("DecodeProtoV2", "", True),
        ("DecodeProtoV2", string_attr("descriptor_source", "local://"), True),
        ("DecodeProtoV2", string_attr("descriptor_source", "bytes://\\n\\x03abc"), True),
        ("DecodeProtoV2", string_attr("descriptor_source", "/etc/descriptors.pb"), False),
        ("EncodeProto", string_attr("descriptor_source", "gs://bucket/d.pb"), False),
    ],
)
def test_scan_checks_attrs_that_name_files(op: str, attrs: str, allowed: bool) -> None:
    model = serving(node("y", op, "x", attrs=attrs))
    if allowed:
        scan_saved_model(model)
    else:
        with pytest.raises(FailedPrecondition, match=f"op {op}"):
            scan_saved_model(model)


def test_checkpoint_ops_are_allowed_in_the_saver_only() -> None:
    saver = function("traced_save", node("save", "SaveV2"), node("merge", "MergeV2Checkpoints"))
    restore = function("traced_restore", node("restore", "RestoreV2"))
    graph = (
        node("y", "Const")
        + node("saver_filename", "Placeholder")
        + call("save_call", "traced_save", "saver_filename")
        + call("restore_call", "traced_restore", "saver_filename")
        + library(saver, restore)
    )
    scan_saved_model(serving(graph, extra='saver_def { restore_op_name: "restore_call" }'))


@pytest.mark.parametrize(
    ("graph", "where"),
    [
        # output <- graph edge <- call -> function
        (call("c", "f") + node("y", "Identity", "c:0") + library(function("f", node("r", "RestoreV2"))), "f"),
        # control input
        (call("c", "f") + node("y", "NoOp", "^c") + library(function("f", node("r", "SaveV2"))), "f"),
        # a function calling another by naming it as its op
        (
            call("y", "outer")
            + library(function("outer", node("n", "inner")), function("inner", node("r", "RestoreV2"))),
            "inner",
        ),
        # list(func) attrs (Case branches)
        (
            node(
                "y",
                "Case",
                attrs='attr { key: "branches" value { list { func { name: "a" } func { name: "b" } } } }',
            )
            + library(function("a"), function("b", node("m", "MergeV2Checkpoints"))),
            "b",
        ),
        # a func nested in another func's attrs
        (
            node("y", "MapDataset", attrs=func_attr("f", "w", nested=func_attr("g", "deep")))
            + library(function("w"), function("deep", node("s", "ShardedFilename"))),
            "deep",
        ),
    ],
    ids=["data-edge", "control-edge", "call-by-op-name", "list-func", "nested-func"],
)
def test_checkpoint_ops_reachable_from_a_signature_are_denied(graph: str, where: str) -> None:
    with pytest.raises(FailedPrecondition, match=f"in function '{where}' .* which runs when the model is loaded"):
        scan_saved_model(serving(graph))


def test_checkpoint_ops_in_init_ops_and_object_functions_are_denied() -> None:
    graph = node("y", "Const") + node("merge", "MergeV2Checkpoints")
    legacy_init = 'collection_def { key: "legacy_init_op" value { node_list { value: "merge" } } }'
    with pytest.raises(FailedPrecondition, match=r"op MergeV2Checkpoints .* in graph node 'merge'"):
        scan_saved_model(serving(graph, extra=legacy_init))

    graph = node("y", "Const") + library(function("initializer", node("s", "SaveV2")))
    objects = 'object_graph_def { concrete_functions { key: "initializer" value { } } }'
    with pytest.raises(FailedPrecondition, match=r"op SaveV2 .* in function 'initializer'"):
        scan_saved_model(serving(graph, extra=objects))


def test_restore_path_must_not_write() -> None:
    restore = function("traced_restore", node("restore", "RestoreV2"), node("save", "SaveV2"))
    graph = node("y", "Const") + call("restore_call", "traced_restore") + library(restore)
    with pytest.raises(FailedPrecondition, match=r"op SaveV2 .* on the path that restores variables"):
        scan_saved_model(serving(graph, extra='saver_def { restore_op_name: "restore_call" }'))


@pytest.mark.parametrize("filename", ["../../etc/passwd", "/etc/passwd", "a\\\\..\\\\..\\\\b"])
def test_asset_names_must_stay_in_assets(filename: str) -> None:
    asset = f'asset_file_def {{ tensor_info {{ name: "asset:0" }} filename: "{filename}" }}'
    with pytest.raises(FailedPrecondition, match="asset file name"):
        scan_saved_model(serving(node("y", "Const"), extra=asset))


def test_tf1_text_file_table_must_read_an_asset() -> None:
    asset = 'asset_file_def { tensor_info { name: "vocab_path:0" } filename: "vocab.txt" }'
    fed_by_asset = node("y", "InitializeTableFromTextFileV2", "table", "vocab_path:0") + node("vocab_path", "Const")
    scan_saved_model(serving(fed_by_asset, extra=asset))
    fed_by_const = node("y", "InitializeTableFromTextFileV2", "table", "path:0") + node("path", "Const")
    with pytest.raises(FailedPrecondition, match="not a packaged asset"):
        scan_saved_model(serving(fed_by_const, extra=asset))


@pytest.fixture(scope="module")
def vocab_model(build: Build) -> saved_model_pb2.SavedModel:
    model = saved_model_pb2.SavedModel()
    model.ParseFromString((build(models.vocab_asset_saved_model_dir) / "saved_model.pb").read_bytes())
    return model


def initializer_call(model: saved_model_pb2.SavedModel) -> tuple[object, str]:
    """The main-graph node calling the table's _initializer function, and that function's name."""
    for n in model.meta_graphs[0].graph_def.node:
        if "f" in n.attr and "_initializer_" in n.attr["f"].func.name:
            return n, n.attr["f"].func.name
    raise AssertionError("no initializer call in the vocab model")


def test_vocab_asset_table_is_allowed(vocab_model: saved_model_pb2.SavedModel) -> None:
    scan_saved_model(vocab_model)


def test_table_initializer_fed_a_constant_path_is_denied(vocab_model: saved_model_pb2.SavedModel) -> None:
    tampered = saved_model_pb2.SavedModel()
    tampered.CopyFrom(vocab_model)
    call_node, initializer = initializer_call(tampered)
    call_node.input[0] = "evil_path:0"
    tampered.meta_graphs[0].graph_def.node.add(name="evil_path", op="Const")
    with pytest.raises(FailedPrecondition, match=f"InitializeTableFromTextFileV2 .* in function '{initializer}'"):
        scan_saved_model(tampered)


def test_table_initializer_bound_to_a_non_asset_is_denied(vocab_model: saved_model_pb2.SavedModel) -> None:
    tampered = saved_model_pb2.SavedModel()
    tampered.CopyFrom(vocab_model)
    _, initializer = initializer_call(tampered)
    objects = tampered.meta_graphs[0].object_graph_def
    bound = objects.concrete_functions[initializer].bound_inputs
    constant = next(i for i, o in enumerate(objects.nodes) if o.WhichOneof("kind") == "constant")
    bound[0] = constant  # the filename argument now comes from a string constant object
    with pytest.raises(FailedPrecondition, match="not a packaged asset"):
        scan_saved_model(tampered)
