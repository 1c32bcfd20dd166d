"""TFaaS's curl command lines, unchanged but for the address, against the HTTP front: the form upload of a frozen
graph with params.json and labels.txt, the gzip SavedModel bundle, /models, /json, /image, /proto and /delete."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import keras
import numpy as np
import pytest

from tests import models
from tests.api.helpers import upload
from tests.rest.helpers import curl, curl_raw
from tests.serving import unique_name
from tests.tfaas.helpers import image
from tt_server.app import Application
from tt_server.rest.tfaas import PredictionsMessage, RowMessage

ROW = [1.1, 2.0, 0.5, -1.0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, Path]:
    """A TFaaS model folder: model.pb (a frozen MLP), params.json, labels.txt and input.json."""
    folder = tmp_path_factory.mktemp("tfaas")
    model = models.build_mlp()
    (folder / "model.pb").write_bytes(models.freeze(model).as_graph_def().SerializeToString())
    (folder / "labels.txt").write_text("background\nsignal\n")
    return model, folder


def expected_score(model: keras.Model) -> float:
    return float(np.asarray(model(np.array([ROW], np.float32), training=False))[0, 0])


async def test_form_upload_models_json_proto_and_delete(app: Application, files) -> None:
    model, folder = files
    name = unique_name("vk")
    params = {"name": name, "model": "model.pb", "labels": "labels.txt", "inputNode": models.FROZEN_INPUT,
              "outputNode": models.FROZEN_OUTPUT, "description": "the seed's example", "options": ["a"]}  # fmt: skip
    (folder / "params.json").write_text(json.dumps(params))
    url = app.http_url
    # curl -s -X POST http:/localhost:8083/upload -F 'name=vk' -F 'params=@/path/params.json' \
    #     -F 'model=@/path/model.pb' -F 'labels=@/path/labels.txt'
    status, body = await curl(
        "-s", "-X", "POST", f"{url}/upload", "-F", f"name={name}", "-F", f"params=@{folder}/params.json",
        "-F", f"model=@{folder}/model.pb", "-F", f"labels=@{folder}/labels.txt",
    )  # fmt: skip
    assert status == 200, body
    assert (body["name"], body["version"]) == (name, 1)

    status, listed = await curl(f"{url}/models")
    [entry] = [e for e in listed if e["name"] == name]
    assert {k: entry[k] for k in ("model", "labels", "options", "inputNode", "outputNode", "description")} == {
        "model": "model.pb", "labels": "labels.txt", "options": ["a"], "inputNode": models.FROZEN_INPUT,
        "outputNode": models.FROZEN_OUTPUT, "description": "the seed's example",
    }  # fmt: skip
    assert entry["timestamp"]

    # curl -s -X POST -H "Content-type: application/json" -d@/path/input.json http://localhost:8083/json
    (folder / "input.json").write_text(json.dumps({"keys": ["a", "b", "c", "d"], "values": ROW, "model": name}))
    for route in ("json", "predict/json"):
        status, answer = await curl(
            "-s", "-X", "POST", "-H", "Content-type: application/json", f"-d@{folder}/input.json", f"{url}/{route}"
        )
        assert status == 200
        assert answer == [pytest.approx(expected_score(model), abs=1e-6)]

    row = RowMessage(key=["a", "b", "c", "d"], value=ROW, model=name)
    (folder / "row.pb").write_bytes(row.SerializeToString())
    process = await curl_raw("-s", "-X", "POST", "--data-binary", f"@{folder}/row.pb", f"{url}/proto")
    predictions = PredictionsMessage()
    predictions.ParseFromString(process)
    assert [p.probability for p in predictions.prediction] == [pytest.approx(expected_score(model), abs=1e-6)]

    status, body = await curl("-s", "-X", "DELETE", f"{url}/delete?model={name}")
    assert (status, body["deleted_versions"]) == (200, 1)
    status, body = await curl("-s", "-X", "POST", "-H", "Content-type: application/json",
                              f"-d@{folder}/input.json", f"{url}/json")  # fmt: skip
    assert status == 404 and name in body["error"]


async def test_gzip_saved_model_bundle(app: Application, tmp_path: Path) -> None:
    # ls model -> assets saved_model.pb variables; tar cfz model.tar.gz model
    name = unique_name("bundle")
    export = models.mlp_export_dir(tmp_path)
    (export / "labels.txt").write_text("background\nsignal\n")
    archive = tmp_path / "models.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(export, arcname=name)
    # curl -X POST -H "Content-Encoding: gzip" -H "content-type: application/octet-stream" \
    #      --data-binary @/path/models.tar.gz http://localhost:8083/upload
    status, body = await curl(
        "-X", "POST", "-H", "Content-Encoding: gzip", "-H", "content-type: application/octet-stream",
        "--data-binary", f"@{archive}", f"{app.http_url}/upload",
    )  # fmt: skip
    assert status == 200, body
    assert body == {"name": name, "version": 1, "model_created": True}
    row = json.dumps({"keys": [], "values": ROW, "model": name})
    status, answer = await curl("-H", "Content-type: application/json", "-d", row, f"{app.http_url}/json")
    assert status == 200 and len(answer) == 1 and 0 <= answer[0] <= 1
    # Not a tarball: a clear 400, nothing stored.
    (tmp_path / "junk.bin").write_bytes(b"not a tarball" * 100)
    status, body = await curl("--data-binary", f"@{tmp_path}/junk.bin", f"{app.http_url}/upload")
    assert status == 400 and body["code"] == "INVALID_ARGUMENT"


async def test_image(app: Application, registry_stub, tmp_path: Path) -> None:
    name = unique_name("img")
    colours = models.colour_classifier_keras(tmp_path)
    await upload(
        registry_stub, name, colours, class_names_text="red\ngreen\nblue\n", image_scaling="IMAGE_SCALING_UNIT"
    )
    (tmp_path / "file.png").write_bytes(image("green", "PNG", (64, 48)))
    # curl https://localhost:8083/image -F 'image=@/path/file.png' -F 'model=ImageModel'
    status, body = await curl(f"{app.http_url}/image", "-F", f"image=@{tmp_path}/file.png", "-F", f"model={name}")
    assert status == 200, body
    assert body["filename"] == "file.png"
    assert [c["label"] for c in body["labels"]] == ["green", "red", "blue"]
    assert body["labels"][0]["probability"] > 0.99
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    status, body = await curl(f"{app.http_url}/image", "-F", f"image=@{tmp_path}/bad.png", "-F", f"model={name}")
    assert status == 400 and body["field_violations"]


async def test_bundle_of_a_frozen_graph_with_params_and_labels(app: Application, files, tmp_path: Path) -> None:
    model, folder = files
    name = unique_name("fg")
    bundle = tmp_path / name
    bundle.mkdir()
    (bundle / "model.pb").write_bytes((folder / "model.pb").read_bytes())
    (bundle / "classes.txt").write_text("background\nsignal\n")
    params = {"model": "model.pb", "labels": "classes.txt", "inputNode": models.FROZEN_INPUT,
              "outputNode": models.FROZEN_OUTPUT, "description": "bundled"}  # fmt: skip
    (bundle / "params.json").write_text(json.dumps(params))
    archive = tmp_path / "models.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=name)
    status, body = await curl("-X", "POST", "-H", "content-type: application/octet-stream",
                              "--data-binary", f"@{archive}", f"{app.http_url}/upload")  # fmt: skip
    assert (status, body["name"]) == (200, name), body
    status, listed = await curl(f"{app.http_url}/models")
    [entry] = [e for e in listed if e["name"] == name]
    assert (entry["model"], entry["labels"], entry["inputNode"], entry["description"]) == (
        "model.pb",
        "classes.txt",
        models.FROZEN_INPUT,
        "bundled",
    )
    row = json.dumps({"values": ROW, "model": name})
    status, answer = await curl("-H", "Content-type: application/json", "-d", row, f"{app.http_url}/json")
    assert answer == [pytest.approx(expected_score(model), abs=1e-6)]


async def test_bad_uploads_name_the_form_field_or_bundle_file(app: Application, files, tmp_path: Path) -> None:
    """Violations name what a TFaaS caller sent (a form field, a file in the bundle), not the gRPC header."""
    _, folder = files
    name = unique_name("badfg")
    params = {"model": "model.pb", "inputNode": "no_such_node", "outputNode": models.FROZEN_OUTPUT}
    (tmp_path / "params.json").write_text(json.dumps(params))
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")  # 3 names, one output column
    form = ["-F", f"name={name}", "-F", f"params=@{tmp_path}/params.json", "-F", f"model=@{folder}/model.pb"]
    status, body = await curl("-X", "POST", f"{app.http_url}/upload", *form)
    assert status == 400 and [v["field"] for v in body["field_violations"]] == ["params.inputNode"], body
    params["inputNode"] = models.FROZEN_INPUT
    (tmp_path / "params.json").write_text(json.dumps(params))
    status, body = await curl("-X", "POST", f"{app.http_url}/upload", *form, "-F", f"labels=@{tmp_path}/labels.txt")
    assert status == 400 and [v["field"] for v in body["field_violations"]] == ["labels"], body

    bundle = tmp_path / name
    bundle.mkdir()
    (bundle / "model.pb").write_bytes((folder / "model.pb").read_bytes())
    (bundle / "params.json").write_text(json.dumps({**params, "outputNode": "no_such_node"}))
    archive = tmp_path / "models.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=name)
    status, body = await curl("-X", "POST", "--data-binary", f"@{archive}", f"{app.http_url}/upload")
    assert status == 400 and [v["field"] for v in body["field_violations"]] == ["params.json.outputNode"], body
