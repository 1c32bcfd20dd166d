"""The HTTP front's lifecycle and limits: in-flight bound, graceful drain, metrics, request ids."""

from __future__ import annotations

import asyncio
import logging
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


async def test_access_log_has_a_line_per_http_request(
    tmp_path: Path, compat_model_files, caplog: pytest.LogCaptureFixture
) -> None:
    """TT_ACCESS_LOG=all: an HTTP request gets the same line as a gRPC call (route template, model, version
    served or concerned, status), failures included; a keep-alive connection's next request does not inherit the
    model. Registry routes name the model and version they touched (an upload's new version, a label's target, a
    deleted version), as their gRPC methods do."""
    application = Application(server_settings(tmp_path, http_address="127.0.0.1:0", access_log="all"))
    await application.start()
    try:
        caplog.set_level(logging.INFO, logger="tt_server.access")
        async with aiohttp.ClientSession(application.http_url) as http:
            artifact = compat_model_files["mlp_v1"].read_bytes()
            async with http.post("/api/v1/models/logged/versions", data=artifact) as response:
                assert response.status == 200, await response.text()
            async with http.post("/v1/models/logged:predict", json={"instances": [[1, 2, 3, 4]]}) as response:
                assert response.status == 200, await response.text()
            async with http.get("/v1/models/nothing-here") as response:
                assert response.status == 404
            async with http.get("/api/v1/models") as response:  # concerns no one model
                assert response.status == 200
            async with http.post("/api/v1/models/logged/versions", data=artifact) as response:
                assert response.status == 200, await response.text()
            async with http.put("/api/v1/models/logged/labels/stable", json={"version": 2}) as response:
                assert response.status == 200, await response.text()
            async with http.delete("/api/v1/models/logged/versions/1") as response:
                assert response.status == 200, await response.text()
    finally:
        await application.stop(grace=1.0)
    lines = {r.method: r for r in caplog.records if r.name == "tt_server.access"}  # type: ignore[attr-defined]
    predict = lines["HTTP POST /v1/models/{model}:predict"]
    assert (predict.model, predict.version, predict.status) == ("logged", 1, "OK")  # type: ignore[attr-defined]
    assert predict.duration_ms > 0  # type: ignore[attr-defined]
    missing = lines["HTTP GET /v1/models/{model}"]
    assert (missing.model, missing.version, missing.status) == ("nothing-here", None, "NOT_FOUND")  # type: ignore[attr-defined]
    listed = lines["HTTP GET /api/v1/models"]
    assert (listed.model, listed.version, listed.status) == (None, None, "OK")  # type: ignore[attr-defined]
    for method, version in [
        ("HTTP POST /api/v1/models/{name}/versions", 2),  # the later upload's line
        ("HTTP PUT /api/v1/models/{name}/labels/{label}", 2),
        ("HTTP DELETE /api/v1/models/{name}/versions/{version}", 1),
    ]:
        line = lines[method]
        assert (line.model, line.version, line.status) == ("logged", version, "OK"), method  # type: ignore[attr-defined]


async def test_a_client_that_goes_away_cancels_its_request(
    tmp_path: Path, compat_model_files, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that disconnects mid-upload: the request is cancelled (counted CANCELLED, as a cancelled gRPC
    call), not reported as an INTERNAL error, and nothing half-written is published."""
    application = Application(server_settings(tmp_path, http_address="127.0.0.1:0"))
    await application.start()
    cancelled = metrics.RPCS.labels("HTTP POST /api/v1/models/{name}/versions", "CANCELLED")
    before = cancelled._value.get()
    artifact = compat_model_files["mlp_v1"].read_bytes()
    try:
        host, port = application.http_url.removeprefix("http://").rsplit(":", 1)
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /api/v1/models/dropped/versions HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {len(artifact)}\r\n\r\n".encode()
            + artifact[: len(artifact) // 2]
        )
        await writer.drain()
        assert application._http is not None
        for _ in range(200):  # until the server is reading the body
            if application._http._front.in_flight:
                break
            await asyncio.sleep(0.01)
        writer.close()  # gone, half the body sent
        for _ in range(200):
            if not application._http._front.in_flight:
                break
            await asyncio.sleep(0.01)
        assert application._http._front.in_flight == 0
        assert cancelled._value.get() == before + 1
        async with aiohttp.ClientSession(application.http_url) as http, http.get("/api/v1/models/dropped") as answer:
            assert answer.status == 404
    finally:
        await application.stop(grace=1.0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records
