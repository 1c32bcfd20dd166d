"""The registry and jobs as JSON under /api/v1: uploads, job inputs and downloads streamed both ways."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp
import numpy as np

from tests.compat.helpers import Served, keras_outputs
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


async def test_bad_uploads_get_field_violations(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/v1/models/bad%20name/versions", data=b"x") as response:
        body = await response.json()
    assert response.status == 400 and body["field_violations"][0]["field"] == "header.model_name"
    async with http.post("/api/v1/models/m1/versions", params={"format": "onnx"}, data=b"x") as response:
        body = await response.json()
    assert response.status == 400 and body["field_violations"][0]["field"] == "format"
    async with http.post(f"/api/v1/models/{unique_name()}/versions", data=b"not a model at all") as response:
        assert response.status == 400


async def test_job_from_a_streamed_csv(http: aiohttp.ClientSession, served: Served) -> None:
    x = np.random.default_rng(5).normal(size=(500, 4)).astype(np.float32)
    csv = "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in x).encode()
    async with http.post(
        "/api/v1/jobs", params={"model": f"{served.mlp}:1", "output_format": "csv"}, data=_chunked(csv, 4096)
    ) as response:
        assert response.status == 200, await response.text()
        job = (await response.json())["job"]
    assert job["model"] == {"name": served.mlp, "version": "1"}
    for _ in range(300):
        async with http.get(f"/api/v1/jobs/{job['id']}") as response:
            job = (await response.json())["job"]
        if job["state"] not in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING"):
            break
        await asyncio.sleep(0.1)
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
