"""/openapi.json describes every route the server serves, and /docs renders it in a real browser (headless
Chromium): the test prints where its screenshot is."""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path

import aiohttp
from PIL import Image

from tests.services import service_missing
from tt_server.app import Application


async def test_openapi_lists_every_route_with_its_grpc_method(app: Application, http: aiohttp.ClientSession) -> None:
    async with http.get("/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert paths["/v2/models/{model}/infer"]["post"]["x-grpc-method"] == "/inference.GRPCInferenceService/ModelInfer"
    assert "/v1/models/{model}:predict" in paths and "/upload" in paths and "/api/v1/jobs" in paths
    assert paths["/api/v1/models/{name}/versions"]["post"]["x-grpc-method"].endswith("UploadModelVersion")
    served = {(r.method.lower(), r.resource.canonical) for r in app._http.app.router.routes() if r.resource}  # type: ignore[union-attr]
    documented = {(method, path) for path, ops in paths.items() for method in ops}
    assert documented == {(m, p) for m, p in served if p != "/{tail}"}
    infer = paths["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert infer["required"] == ["inputs"]
    operation_ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))


async def test_docs_page_renders_in_headless_chromium(app: Application, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        service_missing("chromium not found; install it with: make tools")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=10000",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    url = f"{app.http_url}/docs"
    dom = await _run(browser, *flags, "--dump-dom", url)
    assert 'data-rendered="' in dom, dom[:2000]
    assert "Open Inference Protocol" in dom and "/v2/models/{model}/infer" in dom and "TFaaS" in dom

    screenshot = tmp_path / "docs.png"
    await _run(browser, *flags, "--window-size=1280,1600", f"--screenshot={screenshot}", url)
    print(f"\n/docs screenshot: {screenshot}")
    with Image.open(io.BytesIO(screenshot.read_bytes())) as picture:
        assert picture.size == (1280, 1600)
        colours = picture.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20  # text and method badges, not a blank page


async def _run(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-2000:]
    return out.decode()
