"""The registry and jobs as JSON under /api/v1: uploads, job inputs and downloads streamed both ways."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import aiohttp
import numpy as np

from tests.compat.helpers import Served, keras_outputs
from tests.rest.helpers import finished_job
from tests.serving import unique_name


async def _chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_upload_list_get_labels_download_and_delete(http: aiohttp.ClientSession, served: Served) -> None:
    name = unique_name("native")
    artifact = served.files["mlp_v1"].read_bytes()
    # A chunked body (no Content-Length): the server streams it to the registry as it arrives.
    async with http.post(
        f"/api/v1/models/{name}/versions", params=[("label", "stable"), ("description", "first")],
        data=_chunked(artifact),
    ) as response:  # fmt: skip
        assert response.status == 200, await response.text()
        uploaded = await response.json()
    assert uploaded["modelCreated"] and uploaded["version"]["version"] == "1"
    assert uploaded["version"]["sha256"] == hashlib.sha256(artifact).hexdigest()
    async with http.post(f"/api/v1/models/{name}/versions", data=served.files["mlp_v2"].read_bytes()) as response:
        assert (await response.json())["version"]["version"] == "2"

    async with http.get("/api/v1/models", params={"page_size": "1000"}) as response:
        assert name in [m["name"] for m in (await response.json())["models"]]
    async with http.get(f"/api/v1/models/{name}") as response:
        model = (await response.json())["model"]
    assert (model["latestVersion"], model["labels"]) == ("2", {"stable": "1"})
    async with http.get(f"/api/v1/models/{name}/versions") as response:
        assert [v["version"] for v in (await response.json())["versions"]] == ["2", "1"]
    async with http.get(f"/api/v1/models/{name}/labels/stable") as response:
        assert (await response.json())["version"]["description"] == "first"
    async with http.put(f"/api/v1/models/{name}/labels/stable", json={"version": 2}) as response:
        assert (await response.json()) == {"previousVersion": "1"}
    async with http.get(f"/api/v1/models/{name}/versions/1/artifact") as response:
        assert response.status == 200 and response.headers["X-Sha256"] == uploaded["version"]["sha256"]
        assert await response.read() == artifact
    async with http.delete(f"/api/v1/models/{name}/labels/stable") as response:
        assert (await response.json()) == {"previousVersion": "2"}
    async with http.delete(f"/api/v1/models/{name}/versions/1") as response:
        assert response.status == 200
    async with http.get(f"/api/v1/models/{name}/versions/1") as response:
        assert response.status == 404
    async with http.delete(f"/api/v1/models/{name}") as response:
        assert (await response.json()) == {"deletedVersions": "1"}  # proto3 JSON: int64 as a string


async def _violations(response: aiohttp.ClientResponse) -> dict[str, str]:
    assert response.status == 400, await response.text()
    return {v["field"]: v["description"] for v in (await response.json())["field_violations"]}


async def test_bad_uploads_get_violations_on_the_fields_the_caller_sent(
    http: aiohttp.ClientSession, served: Served
) -> None:
    """The path's {name}, the query parameters and the body: never the gRPC upload's header.* or chunk."""
    async with http.post("/api/v1/models/bad%20name/versions", data=b"x") as response:
        assert list(await _violations(response)) == ["name"]
    async with http.post("/api/v1/models/m1/versions", params={"format": "onnx"}, data=b"x") as response:
        assert list(await _violations(response)) == ["format"]
    versions = f"/api/v1/models/{unique_name()}/versions"
    params = [("label", "ok"), ("label", "Not A Label"), ("feature_name", "a"), ("feature_name", "a")]
    async with http.post(versions, params=params, data=b"x") as response:
        assert list(await _violations(response)) == ["label[1]", "feature_name"]
    async with http.post(versions, params={"input_node": "x", "output_node": "y"}, data=b"x") as response:
        assert "not a TensorFlow GraphDef" in (await _violations(response))["body"]
    async with http.post(versions, params={"format": "keras", "input_node": "x", "output_node": "y"}) as response:
        assert "not KERAS" in (await _violations(response))["input_node"]
    async with http.post(versions, params={"expected_sha256": "0" * 64}, data=b"x") as response:
        assert list(await _violations(response)) == ["expected_sha256"]
    async with http.post(versions, data=b"") as response:
        assert (await _violations(response)) == {"body": "the upload carried no data"}
    async with http.post(versions, data=bytes(range(256))) as response:  # unknown binary: perhaps a .pb
        found = await _violations(response)
    assert "unrecognised model file" in found["format"] and "`input_node`" in found["format"]
    mlp = served.files["mlp_v1"].read_bytes()
    async with http.post(versions, params=[("feature_name", "a")], data=mlp) as response:
        assert "1 names given" in (await _violations(response))["feature_name"]
    async with http.post(versions, params=[("class_name", c) for c in "abc"], data=mlp) as response:
        assert list(await _violations(response)) == ["class_name"]


async def test_job_from_a_streamed_csv(http: aiohttp.ClientSession, served: Served) -> None:
    x = np.random.default_rng(5).normal(size=(500, 4)).astype(np.float32)
    csv = "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in x).encode()
    async with http.post(
        "/api/v1/jobs", params={"model": f"{served.mlp}:1", "output_format": "csv"}, data=_chunked(csv, 4096)
    ) as response:
        assert response.status == 200, await response.text()
        job = (await response.json())["job"]
    assert job["model"] == {"name": served.mlp, "version": "1"}
    job = await finished_job(http, job["id"])
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    async with http.get(f"/api/v1/jobs/{job['id']}/results") as response:
        assert response.headers["Content-Type"].startswith("text/csv")
        text = await response.text()
    x32 = np.array([[float(f"{v:.6f}") for v in row] for row in x], np.float32)
    scores = np.array([float(line.split(",")[-1]) for line in text.splitlines()[1:]], np.float32)
    np.testing.assert_allclose(scores, keras_outputs(served.files["mlp_v1"], x32)["score"][:, 0], atol=1e-5)
    async with http.get("/api/v1/jobs", params={"model": served.mlp}) as response:
        assert job["id"] in [j["id"] for j in (await response.json())["jobs"]]
    async with http.post(f"/api/v1/jobs/{job['id']}:cancel") as response:
        assert response.status == 400, await response.text()  # finished: FAILED_PRECONDITION
    async with http.get("/api/v1/jobs/no-such-job") as response:
        assert response.status in (400, 404)
    async with http.post("/api/v1/jobs", params={"model": ""}, data=b"1,2,3,4\n") as response:
        assert (await response.json())["field_violations"][0]["field"] == "model"


async def test_bad_jobs_get_violations_on_the_fields_the_caller_sent(
    http: aiohttp.ClientSession, served: Served
) -> None:
    """The query parameters and the body: never the gRPC CreateJob's spec.* or chunk."""
    model = f"{served.mlp}:1"
    csv = b"a,b,c,d\n1,2,3,4\n"
    async with http.post("/api/v1/jobs", params={"model": model}, data=b"") as response:
        assert list(await _violations(response)) == ["body"]
    async with http.post("/api/v1/jobs", params={"model": f"{unique_name()}-no:1"}, data=csv) as response:
        assert response.status == 404
    cases = [
        ([("has_header", "true"), *(("feature_column", c) for c in "abcz")], "feature_column[3]"),
        ([("has_header", "true"), ("passthrough_column", "a"), ("passthrough_column", "a")], "passthrough_column[1]"),
        ([("feature_column", "a")], "feature_column"),
        ([("feature_column_index", i) for i in "0129"], "feature_column_index[3]"),
        ([("delimiter", ";;")], "delimiter"),
    ]
    for params, field in cases:
        async with http.post("/api/v1/jobs", params=[("model", model), *params], data=csv) as response:
            assert field in await _violations(response), params
