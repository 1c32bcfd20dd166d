"""Frozen graphs (TFaaS's .pb + params.json) end to end on each backend: upload with node names, serve, refuse."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
from tensortrigger.v1 import inference_service_pb2 as ipb
from tensortrigger.v1 import model_pb2, registry_service_pb2, tensor_pb2

from tests import models
from tests.api.helpers import upload, violations
from tests.serving import unique_name

F32 = tensor_pb2.DATA_TYPE_FLOAT32
FROZEN = model_pb2.MODEL_FORMAT_FROZEN_GRAPH


@dataclass(frozen=True)
class Frozen:
    """A Keras MLP (the reference) and the frozen graph made from it."""

    model: keras.Model
    pb: Path
    sigmoid: str  # the tensor output_node0 copies, e.g. "functional_1/score_1/Sigmoid:0"


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Frozen:
    model = models.build_mlp()
    graph = models.freeze(model)
    pb = tmp_path_factory.mktemp("frozen") / "mlp.pb"
    pb.write_bytes(graph.as_graph_def().SerializeToString())
    sigmoid = graph.get_operation_by_name(models.FROZEN_OUTPUT).inputs[0].name
    return Frozen(model, pb, sigmoid)


def nodes(inputs: list[str], outputs: list[str]) -> model_pb2.FrozenGraphNodes:
    return model_pb2.FrozenGraphNodes(input_nodes=inputs, output_nodes=outputs)


TFAAS_NODES = nodes([models.FROZEN_INPUT], [models.FROZEN_OUTPUT])


def features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)


def decode(tensor: tensor_pb2.Tensor) -> np.ndarray:
    if tensor.content:
        return np.frombuffer(tensor.content, "<f4").reshape(tuple(tensor.shape))
    return np.asarray(tensor.float_val, np.float32).reshape(tuple(tensor.shape))


async def predict(stub, name: str, input_name: str, x: np.ndarray, **kw: object) -> ipb.PredictResponse:
    tensor = tensor_pb2.Tensor(dtype=F32, shape=x.shape, content=x.tobytes())
    request = ipb.PredictRequest(model=model_pb2.ModelRef(name=name), inputs={input_name: tensor}, **kw)  # type: ignore[arg-type]
    return await stub.Predict(request)


async def test_upload_by_node_names_and_predict_equal_keras(registry_stub, inference_stub, frozen) -> None:
    name = unique_name("frozen")
    # As TFaaS users upload: no format, just the params.json node names.
    response = await upload(registry_stub, name, frozen.pb, frozen_graph=TFAAS_NODES)
    v = response.version
    assert v.format == FROZEN
    assert (v.frozen_graph.input_nodes, v.frozen_graph.output_nodes) == (["dense_1_input"], ["output_node0"])
    assert list(v.signature.inputs) == [tensor_pb2.TensorSpec(name="dense_1_input", dtype=F32, shape=[-1, 4])]
    assert list(v.signature.outputs) == [tensor_pb2.TensorSpec(name="output_node0", dtype=F32, shape=[-1, 1])]

    x = features(17)
    answer = await predict(inference_stub, name, "dense_1_input", x)
    assert answer.model_version == 1
    np.testing.assert_allclose(decode(answer.outputs["output_node0"]), frozen.model(x, training=False), atol=1e-6)

    # A tensor name ("dense_3/Sigmoid:0" in TFaaS's docs) as the output, the format declared: the signature names
    # the output as given, less ":0".
    second = await upload(
        registry_stub, name, frozen.pb, FROZEN, frozen_graph=nodes(["dense_1_input:0"], [frozen.sigmoid])
    )
    output = frozen.sigmoid.removesuffix(":0")
    assert [o.name for o in second.version.signature.outputs] == [output]
    answer = await predict(inference_stub, name, "dense_1_input", x[:3])
    assert answer.model_version == 2
    np.testing.assert_allclose(decode(answer.outputs[output]), frozen.model(x[:3], training=False), atol=1e-6)


async def test_node_names_are_stored_and_downloaded_with_the_version(app, registry_stub, frozen, tmp_path) -> None:
    name = unique_name("frozen")
    await upload(registry_stub, name, frozen.pb, frozen_graph=TFAAS_NODES)
    stored = await app.metadata.get_version(name, 1)
    assert stored.frozen_graph is not None and stored.frozen_graph.outputs == ("output_node0",)

    got = await registry_stub.GetModelVersion(
        registry_service_pb2.GetModelVersionRequest(model=model_pb2.ModelRef(name=name))
    )
    assert list(got.version.frozen_graph.input_nodes) == ["dense_1_input"]
    request = registry_service_pb2.DownloadModelVersionRequest(model=model_pb2.ModelRef(name=name, version=1))
    messages = [m async for m in registry_stub.DownloadModelVersion(request)]
    assert list(messages[0].version.frozen_graph.output_nodes) == ["output_node0"]
    assert b"".join(m.chunk for m in messages[1:]) == frozen.pb.read_bytes()


@pytest.mark.parametrize(
    ("header", "field", "words"),
    [
        (
            {"frozen_graph": nodes(["dense_input"], ["output_node0"])},
            "header.frozen_graph.input_nodes[0]",
            "no node 'dense_input' in the graph; its Placeholder nodes: 'dense_1_input'",
        ),
        (
            {"frozen_graph": nodes(["dense_1_input"], ["dense_3/Sigmoid:0"])},
            "header.frozen_graph.output_nodes[0]",
            "no node 'dense_3/Sigmoid' in the graph",
        ),
        (
            {"frozen_graph": nodes(["dense_1_input"], ["output_node0:2"])},
            "header.frozen_graph.output_nodes[0]",
            "has 1 output(s)",
        ),
        (
            {"frozen_graph": nodes(["dense 1"], ["output_node0"])},
            "header.frozen_graph.input_nodes[0]",
            "not a node name",
        ),
        ({"frozen_graph": nodes([], ["output_node0"])}, "header.frozen_graph.input_nodes", "at least one"),
        (
            {"frozen_graph": nodes(["dense_1_input"], ["output_node0", "output_node0:0"])},
            "header.frozen_graph.output_nodes[1]",
            "named twice",
        ),
        ({"format": FROZEN}, "header.frozen_graph", "needs its input and output node names"),
        (
            {"format": model_pb2.MODEL_FORMAT_KERAS, "frozen_graph": TFAAS_NODES},
            "header.frozen_graph",
            "not KERAS",
        ),
    ],
    ids=["unknown-input", "unknown-output", "output-index", "malformed", "no-inputs", "twice", "no-nodes", "not-pb"],
)
async def test_bad_node_names_name_the_header_field(registry_stub, frozen, header, field, words) -> None:
    header = dict(header)  # parametrize shares the dict between backends
    fmt = header.pop("format", model_pb2.MODEL_FORMAT_UNSPECIFIED)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(registry_stub, unique_name("bad"), frozen.pb, fmt, **header)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in violations(err.value)[field]


async def test_an_output_needing_an_unnamed_placeholder_is_refused(registry_stub, tmp_path) -> None:
    pb = models.two_placeholder_frozen_graph(tmp_path)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(registry_stub, unique_name("bad"), pb, frozen_graph=TFAAS_NODES)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(err.value)["header.frozen_graph.output_nodes[0]"]
    assert "depends on Placeholder 'other'" in found


async def test_a_pb_that_is_not_a_graph_def(registry_stub, tmp_path) -> None:
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(registry_stub, unique_name("bad"), garbage, frozen_graph=TFAAS_NODES)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a TensorFlow GraphDef" in violations(err.value)["chunk"]

    # Without node names the bytes are just unrecognised, and the error says how to declare a frozen graph.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(registry_stub, unique_name("bad"), garbage)
    assert "header.frozen_graph" in violations(err.value)["header.format"]

    # A .keras zip declared as a frozen graph.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(registry_stub, unique_name("bad"), models.mlp_keras(tmp_path), FROZEN, frozen_graph=TFAAS_NODES)
    assert "declared FROZEN_GRAPH but the file is a Keras" in violations(err.value)["header.format"]


async def test_the_op_deny_list_applies_to_frozen_graphs(registry_stub, tmp_path) -> None:
    pb = models.write_file_frozen_graph(tmp_path)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(registry_stub, unique_name("unsafe"), pb, frozen_graph=TFAAS_NODES)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "unsafe frozen graph: op WriteFile (writes files)" in err.value.details()


async def test_binary_classifier_with_two_class_names(registry_stub, inference_stub, frozen) -> None:
    """TFaaS's usual model: one sigmoid column, two labels; class 1 scores p, class 0 scores 1 - p."""
    name = unique_name("frozen")
    await upload(registry_stub, name, frozen.pb, frozen_graph=TFAAS_NODES, class_names_text="background\nsignal\n")
    x = features(4, seed=3)
    answer = await predict(inference_stub, name, "dense_1_input", x, classify=ipb.ClassifyOptions(top_k=2))
    p = np.asarray(frozen.model(x, training=False))[:, 0]
    assert len(answer.classifications) == 4
    for row, probability in zip(answer.classifications, p, strict=True):
        scores = {c.name: c.score for c in row.classes}
        assert scores["signal"] == pytest.approx(probability, abs=1e-6)
        assert scores["background"] == pytest.approx(1 - probability, abs=1e-6)
        assert row.classes[0].score >= row.classes[1].score
    assert "output_node0" in answer.outputs  # classes come beside the tensors unless omit_outputs
