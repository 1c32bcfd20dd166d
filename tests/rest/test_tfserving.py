"""TF Serving's REST API with the request/response examples of its documentation, sent by curl and aiohttp."""

from __future__ import annotations

import numpy as np
import pytest

from tests.api.helpers import upload
from tests.compat.helpers import Served, keras_outputs
from tests.rest.helpers import curl, half_plus_two_tar_gz
from tests.serving import unique_name
from tt_server.app import Application


@pytest.fixture(scope="module")
async def half_plus_two(registry_stub, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = unique_name("half-plus-two")
    await upload(registry_stub, name, half_plus_two_tar_gz(tmp_path_factory.mktemp("hpt")), labels=["stable"])
    return name


async def test_documented_status_metadata_and_predict_through_curl(app: Application, half_plus_two: str) -> None:
    url = f"{app.http_url}/v1/models/{half_plus_two}"
    status, body = await curl(url)
    assert status == 200
    assert body == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert (await curl(f"{url}/versions/1"))[1] == body
    assert (await curl(f"{url}/labels/stable"))[1] == body

    status, body = await curl(f"{url}/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": half_plus_two, "version": "1", "signature_name": "serving_default"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert signature["outputs"]["y"]["tensor_shape"]["dim"] == [{"size": "-1"}]

    # The documentation's example: curl -d '{"instances": [1.0, 2.0, 5.0]}' -X POST .../half_plus_two:predict
    status, body = await curl("-d", '{"instances": [1.0, 2.0, 5.0]}', "-X", "POST", f"{url}:predict")
    assert (status, body) == (200, {"predictions": [2.5, 3.0, 4.5]})
    status, body = await curl("-d", '{"inputs": [1.0, 2.0, 5.0]}', "-X", "POST", f"{url}/versions/1:predict")
    assert (status, body) == (200, {"outputs": [2.5, 3.0, 4.5]})
    status, body = await curl(
        "-d", '{"signature_name": "serving_default", "instances": [{"x": 1.0}]}', f"{url}:predict"
    )
    assert (status, body) == (200, {"predictions": [2.5]})


async def test_errors_are_tf_serving_shaped(app: Application, half_plus_two: str) -> None:
    url = f"{app.http_url}/v1/models"
    status, body = await curl(f"{url}/no-such-model")
    assert status == 404 and "no-such-model" in body["error"]
    status, body = await curl("-d", '{"instances": ["a", "b"]}', f"{url}/{half_plus_two}:predict")
    assert status == 400 and body["code"] == "INVALID_ARGUMENT"
    assert body["field_violations"][0]["field"] == 'instances["x"]'
    status, body = await curl("-d", '{"instances": [1.0]}', f"{url}/{half_plus_two}/versions/7:predict")
    assert status == 404 and body["error"]
    status, body = await curl("-d", '{"signature_name": "other", "instances": [1.0]}', f"{url}/{half_plus_two}:predict")
    assert status == 400 and "other" in body["error"]
    status, body = await curl("-d", "not json", f"{url}/{half_plus_two}:predict")
    assert status == 400 and body["error"]
    status, body = await curl("-d", '{"instances": [1.0]}', f"{url}/{half_plus_two}:regress")
    assert status == 501 and ":predict" in body["error"]


async def test_named_rows_and_columns_with_two_inputs_and_outputs(http, served: Served) -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 3)).astype(np.float32)
    b = rng.integers(0, 10, size=(2, 2)).astype(np.int32)
    expected = keras_outputs(served.files["two_io"], a, b)
    instances = [{"a": a[i].tolist(), "b": b[i].tolist()} for i in range(2)]
    async with http.post(f"/v1/models/{served.two_io}:predict", json={"instances": instances}) as response:
        assert response.status == 200, await response.text()
        predictions = (await response.json())["predictions"]
    assert len(predictions) == 2 and set(predictions[0]) == {"probs", "value"}
    np.testing.assert_allclose([p["value"] for p in predictions], expected["value"], atol=1e-5)
    columns = {"inputs": {"a": a.tolist(), "b": b.tolist()}}
    async with http.post(f"/v1/models/{served.two_io}:predict", json=columns) as response:
        outputs = (await response.json())["outputs"]
    np.testing.assert_allclose(outputs["probs"], expected["probs"], atol=1e-5)
    # Strings, plain and as {"b64": ...}.
    async with http.post(
        f"/v1/models/{served.vocab}:predict", json={"instances": ["red", {"b64": "Ymx1ZQ=="}, "pink"]}
    ) as response:
        assert (await response.json()) == {"predictions": [0, 2, -1]}


async def test_classify_with_feature_names_and_class_labels(http, registry_stub, served: Served) -> None:
    name = unique_name("cls")
    features = ["attr1", "attr2", "attr3", "attr4"]
    await upload(
        registry_stub, name, served.files["mlp_v1"], class_names_text="background\nsignal\n", feature_names=features
    )
    rows = np.array([[1.1, 2.0, 0.5, -1.0], [0.0, 0.1, 0.2, 0.3]], np.float32)
    score = keras_outputs(served.files["mlp_v1"], rows)["score"][:, 0]
    examples = [dict(zip(features[1:], row[1:].tolist(), strict=True)) for row in rows]
    body = {"context": {"attr1": 1.1}, "examples": examples}
    body["examples"][1]["attr1"] = 0.0  # an example's own feature wins over the context
    async with http.post(f"/v1/models/{name}:classify", json=body) as response:
        assert response.status == 200, await response.text()
        results = (await response.json())["results"]
    for row, s in zip(results, score, strict=True):
        scores = dict(row)
        assert scores["signal"] == pytest.approx(float(s), abs=1e-5)
        assert scores["background"] == pytest.approx(1 - float(s), abs=1e-5)
        assert row[0][1] >= row[1][1]  # best first
    async with http.post(f"/v1/models/{served.mlp}:classify", json=body) as response:
        assert response.status == 400 and "class names" in (await response.json())["error"]
