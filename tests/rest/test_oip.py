"""Triton's own HTTP client (``tritonclient.http``, unmodified) against the Open Inference Protocol REST routes,
plus the JSON tensor form KServe's clients and curl send. The Triton client is synchronous (geventhttpclient),
so its calls run in a thread: the server runs on this event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.compat.helpers import Served, keras_half, keras_outputs, vocab_indices
from tt_server.app import Application

# gevent's hub belongs to one thread: the client is made, used and closed on this one.
_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triton-http")


@pytest.fixture(scope="module")
async def client(app: Application) -> AsyncIterator[triton.InferenceServerClient]:
    c = await call(triton.InferenceServerClient, url=app.http_url.removeprefix("http://"))
    yield c
    await call(c.close)
    _THREAD.shutdown()


async def call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_THREAD, functools.partial(method, *args, **kwargs))


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= 1e-5


async def test_health_and_server_metadata(client) -> None:
    assert await call(client.is_server_live)
    assert await call(client.is_server_ready)
    metadata = await call(client.get_server_metadata)
    assert metadata["name"] == "tensortrigger" and metadata["version"]
    assert "binary_tensor_data" in metadata["extensions"]


async def test_model_ready_and_metadata(client, served: Served) -> None:
    assert await call(client.is_model_ready, served.mlp)
    assert await call(client.is_model_ready, served.mlp, "1")
    assert not await call(client.is_model_ready, served.mlp, "99")
    assert not await call(client.is_model_ready, "no-such-model")
    metadata = await call(client.get_model_metadata, served.mlp)
    assert (metadata["name"], metadata["versions"], metadata["platform"]) == (
        served.mlp,
        ["2", "1"],
        "tensorflow_keras",
    )
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    with pytest.raises(InferenceServerException, match="no-such-model"):
        await call(client.get_model_metadata, "no-such-model")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_infer_equals_keras_and_selects_versions(client, served: Served, binary: bool) -> None:
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    outputs = [triton.InferRequestedOutput("score", binary_data=binary)]
    result = await call(
        client.infer, served.mlp, [infer_input("features", x, "FP32", binary)], outputs=outputs, request_id="r-1"
    )
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (served.mlp, "2", "r-1")
    assert ("parameters" in response["outputs"][0]) == binary
    assert_close(result.as_numpy("score"), keras_outputs(served.files["mlp_v2"], x)["score"])
    result = await call(client.infer, served.mlp, [infer_input("features", x, "FP32", binary)], model_version="1")
    assert result.get_response()["model_version"] == "1"
    assert_close(result.as_numpy("score"), keras_outputs(served.files["mlp_v1"], x)["score"])


async def test_two_inputs_bytes_and_fp16(client, served: Served) -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 3)).astype(np.float32)
    b = rng.integers(0, 10, size=(5, 2)).astype(np.int32)
    expected = keras_outputs(served.files["two_io"], a, b)
    inputs = [infer_input("a", a, "FP32"), infer_input("b", b, "INT32", binary=False)]
    only = await call(client.infer, served.two_io, inputs, outputs=[triton.InferRequestedOutput("value")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["value"]
    assert_close(only.as_numpy("value"), expected["value"])

    colors = [b"red", b"blue", b"pink"]
    for binary in (True, False):
        tensor = infer_input("color", np.array(colors, dtype=object), "BYTES", binary)
        result = await call(client.infer, served.vocab, [tensor])
        np.testing.assert_array_equal(result.as_numpy("index"), vocab_indices(colors))

    h = np.array([[0.5, -1.25], [2.0, 3.0]], np.float16)
    result = await call(client.infer, served.half, [infer_input("h", h, "FP16")])
    got = result.as_numpy("half_out")
    assert got.dtype == np.float16
    assert_close(got.astype(np.float32), keras_half(served.files["half"], h).astype(np.float32))


async def test_errors_name_the_field(client, http: aiohttp.ClientSession, served: Served) -> None:
    bad = infer_input("features", np.zeros((1, 5), np.float32), "FP32")
    with pytest.raises(InferenceServerException, match=r'inputs\["features"\].shape\[1\]') as err:
        await call(client.infer, served.mlp, [bad])
    assert err.value.status() == "400"
    # curl's view: the JSON form with nested data, and the error body with field violations.
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, "x", 4]]}]}
    async with http.post(f"/v2/models/{served.mlp}/infer", json=body) as response:
        assert response.status == 400
        error = await response.json()
    assert error["code"] == "INVALID_ARGUMENT" and error["request_id"]
    assert error["field_violations"][0]["field"] == 'inputs["features"].data'
    async with http.post(f"/v2/models/{served.mlp}/versions/X!/infer", json=body) as response:
        assert response.status == 400
        assert (await response.json())["field_violations"][0]["field"] == "version"
    async with http.post(f"/v2/models/{served.mlp}/infer", data=b"{not json") as response:
        assert response.status == 400
    body["inputs"][0]["data"] = [[1, 2, 3, 4]]
    async with http.post("/v2/models/no-such-model/infer", json=body) as response:
        assert response.status == 404
        assert response.headers["x-request-id"]
    async with http.post(f"/v2/models/{served.mlp}/infer", json=body, headers={"x-request-id": "mine-1"}) as response:
        assert response.status == 200
        assert response.headers["x-request-id"] == "mine-1"
        answer = await response.json()
    assert answer["outputs"][0]["shape"] == [1, 1] and len(answer["outputs"][0]["data"]) == 1


async def test_ready_turns_false_while_draining(tmp_path) -> None:
    from tests.serving import server_settings

    application = Application(server_settings(tmp_path, http_address="127.0.0.1:0", drain_delay_seconds=1.0))
    await application.start()
    async with aiohttp.ClientSession(application.http_url) as http:
        async with http.get("/v2/health/ready") as response:
            assert response.status == 200
        stopping = asyncio.ensure_future(application.stop(grace=1.0))
        await asyncio.sleep(0.2)
        async with http.get("/v2/health/ready") as response:
            assert response.status == 503
        async with http.get("/v2/health/live") as response:
            assert response.status == 200
        await stopping
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as fresh, fresh.get(application.http_url + "/v2/health/live"):
            pass
