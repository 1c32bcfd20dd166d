"""The HTTP front's lifecycle and limits: in-flight bound, graceful drain, metrics, request ids."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.compat.helpers import Served
from tests.serving import server_settings
from tt_server import metrics
from tt_server.app import Application


async def _slow_body(data: bytes, release: asyncio.Event) -> AsyncIterator[bytes]:
    yield data[: len(data) // 2]
    await release.wait()
    yield data[len(data) // 2 :]


async def test_in_flight_bound_and_graceful_drain(tmp_path: Path, compat_model_files) -> None:
    application = Application(
        server_settings(tmp_path, http_address="127.0.0.1:0", max_concurrent_rpcs=1, drain_delay_seconds=0.3)
    )
    await application.start()
    artifact = compat_model_files["mlp_v1"].read_bytes()
    release = asyncio.Event()
    async with aiohttp.ClientSession(application.http_url) as http:
        upload = asyncio.ensure_future(http.post("/api/v1/models/slow/versions", data=_slow_body(artifact, release)))
        for _ in range(100):  # until the upload is being served
            await asyncio.sleep(0.02)
            async with http.get("/api/v1/models") as response:
                if response.status == 429:
                    body = await response.json()
                    break
        assert body["code"] == "RESOURCE_EXHAUSTED"
        # Stop while the upload is still in flight: it finishes within the grace period.
        stopping = asyncio.ensure_future(application.stop(grace=5.0))
        await asyncio.sleep(0.5)  # past the drain delay: the port is closed, the upload goes on
        release.set()
        response = await upload
        assert response.status == 200, await response.text()
        assert (await response.json())["version"]["version"] == "1"
        response.release()
        await stopping


async def test_metrics_and_request_ids(http: aiohttp.ClientSession, served: Served) -> None:
    ok = metrics.RPCS.labels("HTTP GET /v2/models/{model}", "OK")
    missing = metrics.RPCS.labels("HTTP GET /v2/models/{model}", "NOT_FOUND")
    before_ok, before_missing = ok._value.get(), missing._value.get()
    async with http.get(f"/v2/models/{served.mlp}", headers={"X-Request-Id": "bad id;<x>"}) as response:
        assert response.status == 200
        assert response.headers["X-Request-Id"] == "bad_id__x_"  # made safe, as on gRPC
    async with http.get("/v2/models/no-such-model") as response:
        rid = response.headers["X-Request-Id"]
        assert rid and (await response.json())["request_id"] == rid
    assert ok._value.get() == before_ok + 1
    assert missing._value.get() == before_missing + 1
    async with http.get("/no/such/route") as response:
        assert response.status == 404 and (await response.json())["code"] == "NOT_FOUND"


JUNK = [b"", b"\xff\x00\xfe", b"[]", b"null", b'{"inputs": 5}', b'{"instances": [{"b64": 1}]}', b"[" * 5000,
        b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": {"a": 1}}]}',
        b'{"instances": [[1, 2], [3]]}', b'{"examples": [1]}', b'{"keys": 1, "values": "x", "model": 3}']  # fmt: skip


async def test_junk_bodies_never_get_a_5xx(app: Application, http: aiohttp.ClientSession, served: Served) -> None:
    """Every route with a body, fed junk: a 4xx with the JSON error body, never a 5xx (no INTERNAL)."""
    values = {"model": served.mlp, "name": "zz-none", "version": "1", "label": "stable", "id": "zz-none"}
    assert app._http is not None
    for route in app._http.routes:
        if route.method not in ("POST", "PUT"):
            continue
        path = route.path.format(**values)
        for junk in JUNK:
            headers = {"Content-Type": "application/json"} if junk[:1] in (b"{", b"[") else {}
            async with http.request(route.method, path, data=junk, headers=headers) as response:
                expected = 501 if route.path.endswith(":regress") else None  # UNIMPLEMENTED by design
                ok = response.status == expected or 400 <= response.status < 500
                assert ok, (route.path, junk[:40], response.status, await response.text())
                assert (await response.json())["error"]


async def test_a_taken_http_port_is_a_clear_start_up_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        application = Application(server_settings(tmp_path, http_address=f"127.0.0.1:{port}"))
        try:
            with pytest.raises(RuntimeError, match=rf"cannot listen on 127.0.0.1:{port} \(TT_HTTP_ADDRESS\)"):
                await application.start()
        finally:
            await application.stop(grace=0.5)
