"""Triton's own client against a real Tensor Trigger server: the Open Inference Protocol (KServe v2) over gRPC.

``tritonclient.grpc.InferenceServerClient`` always sends raw_input_contents; typed ``contents`` (what KServe's
client sends) go through the protocol's generated stub on the test's channel. The Triton client is synchronous,
so its calls run in a thread: the server runs on this event loop.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.api.helpers import violations
from tests.compat.helpers import Served, grpcurl, keras_half, keras_outputs, vocab_indices
from tests.serving import server_settings
from tt_server.app import Application


@pytest.fixture(scope="module")
def client(app: Application) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=app.address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def oip_stub(channel: grpc.aio.Channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


async def call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(method, *args, **kwargs)


async def call_error(method: Callable[..., Any], *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        await call(method, *args, **kwargs)
    return err.value


def infer_input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= 1e-5


async def test_server_live_ready_and_metadata(client) -> None:
    assert await call(client.is_server_live)
    assert await call(client.is_server_ready)
    metadata = await call(client.get_server_metadata)
    assert metadata.name == "tensortrigger" and metadata.version


async def test_server_ready_turns_false_while_draining(tmp_path) -> None:
    application = Application(server_settings(tmp_path, drain_delay_seconds=1.0))
    await application.start()
    async with grpc.aio.insecure_channel(application.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
        stopping = asyncio.ensure_future(application.stop(grace=1.0))
        await asyncio.sleep(0.2)  # within the drain delay: calls are still taken, but the server is not ready
        assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        await stopping


async def test_model_ready(client, served: Served) -> None:
    assert await call(client.is_model_ready, served.mlp)
    assert await call(client.is_model_ready, served.mlp, "1")
    assert not await call(client.is_model_ready, served.mlp, "99")
    assert not await call(client.is_model_ready, "no-such-model")


async def test_model_metadata(client, served: Served) -> None:
    metadata = await call(client.get_model_metadata, served.mlp)
    assert (metadata.name, list(metadata.versions), metadata.platform) == (served.mlp, ["2", "1"], "tensorflow_keras")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("features", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [("score", "FP32", [-1, 1])]
    vocab = await call(client.get_model_metadata, served.vocab, "1")
    assert vocab.platform == "tensorflow_savedmodel"
    assert [(t.name, t.datatype) for t in (*vocab.inputs, *vocab.outputs)] == [("color", "BYTES"), ("index", "INT64")]
    assert (await call_error(client.get_model_metadata, "no-such-model")).status() == "StatusCode.NOT_FOUND"


async def test_infer_raw_equals_keras_and_selects_versions(client, served: Served) -> None:
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    result = await call(client.infer, served.mlp, [infer_input("features", x, "FP32")], request_id="r-1")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (served.mlp, "2", "r-1")
    assert len(response.raw_output_contents) == 1  # raw in, raw out
    assert_close(result.as_numpy("score"), keras_outputs(served.files["mlp_v2"], x)["score"])

    result = await call(client.infer, served.mlp, [infer_input("features", x, "FP32")], model_version="1")
    assert result.get_response().model_version == "1"
    assert_close(result.as_numpy("score"), keras_outputs(served.files["mlp_v1"], x)["score"])


async def test_two_inputs_and_requested_outputs(client, served: Served) -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 3)).astype(np.float32)
    b = rng.integers(0, 10, size=(5, 2)).astype(np.int32)
    expected = keras_outputs(served.files["two_io"], a, b)
    inputs = [infer_input("a", a, "FP32"), infer_input("b", b, "INT32")]
    result = await call(client.infer, served.two_io, inputs)
    for name in ("probs", "value"):
        assert_close(result.as_numpy(name), expected[name])
    only = await call(client.infer, served.two_io, inputs, outputs=[triton.InferRequestedOutput("value")])
    assert [o.name for o in only.get_response().outputs] == ["value"]
    assert_close(only.as_numpy("value"), expected["value"])


async def test_bytes_in_raw(client, served: Served) -> None:
    colors = [b"red", b"blue", b"pink"]
    result = await call(client.infer, served.vocab, [infer_input("color", np.array(colors, dtype=object), "BYTES")])
    np.testing.assert_array_equal(result.as_numpy("index"), vocab_indices(colors))


async def test_fp16_raw(client, served: Served) -> None:
    x = np.array([[0.5, -1.25], [2.0, 3.0]], np.float16)
    result = await call(client.infer, served.half, [infer_input("h", x, "FP16")])
    assert result.get_response().outputs[0].datatype == "FP16"
    got = result.as_numpy("half_out")
    assert got.dtype == np.float16
    assert_close(got.astype(np.float32), keras_half(served.files["half"], x).astype(np.float32))


async def test_typed_contents_answer_typed(oip_stub, served: Served) -> None:
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=served.mlp, model_version="2")
    request.inputs.add(name="features", datatype="FP32", shape=x.shape).contents.fp32_contents.extend(x.ravel())
    response = await oip_stub.ModelInfer(request)
    assert not response.raw_output_contents
    out = response.outputs[0]
    assert (out.name, out.datatype, list(out.shape)) == ("score", "FP32", [3, 1])
    got = np.asarray(out.contents.fp32_contents, np.float32).reshape(3, 1)
    assert_close(got, keras_outputs(served.files["mlp_v2"], x)["score"])

    colors = [b"green", b"nope"]
    request = pb.ModelInferRequest(model_name=served.vocab)
    request.inputs.add(name="color", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(colors)
    response = await oip_stub.ModelInfer(request)
    assert response.outputs[0].datatype == "INT64"
    assert list(response.outputs[0].contents.int64_contents) == vocab_indices(colors).tolist()


def _request(model: str, **tensor: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(**tensor)
    return request


BAD_REQUESTS: dict[str, tuple[Callable[[str], pb.ModelInferRequest], str]] = {
    "wrong datatype": (
        lambda m: _request(m, name="features", datatype="INT32", shape=[1, 4], contents={"int_contents": [1] * 4}),
        'inputs["features"].dtype',
    ),
    "wrong shape": (
        lambda m: _request(m, name="features", datatype="FP32", shape=[1, 5], contents={"fp32_contents": [1] * 5}),
        'inputs["features"].shape[1]',
    ),
    "unknown input": (
        lambda m: _request(m, name="extra", datatype="FP32", shape=[1, 4], contents={"fp32_contents": [1] * 4}),
        'inputs["extra"]',
    ),
    "unsupported datatype": (
        lambda m: _request(m, name="features", datatype="UINT32", shape=[1, 4], contents={"uint_contents": [1] * 4}),
        'inputs["features"].datatype',
    ),
    "values in the wrong field": (
        lambda m: _request(m, name="features", datatype="FP32", shape=[1, 4], contents={"fp64_contents": [1] * 4}),
        'inputs["features"].contents',
    ),
    "fp16 typed": (
        lambda m: _request(m, name="features", datatype="FP16", shape=[1, 4]),
        'inputs["features"].contents',
    ),
    "raw count": (
        lambda m: pb.ModelInferRequest(
            model_name=m,
            inputs=[{"name": "features", "datatype": "FP32", "shape": [1, 4]}],
            raw_input_contents=[b"\0" * 16, b"\0" * 16],
        ),
        "raw_input_contents",
    ),
    "no values": (lambda m: _request(m, name="features", datatype="FP32", shape=[1, 4]), 'inputs["features"].values'),
    "version not a label": (lambda m: pb.ModelInferRequest(model_name=m, model_version="Stable!"), "model_version"),
}


async def test_a_bad_model_name_is_reported_on_the_name_field(oip_stub) -> None:
    # The registry's naming rule, reported on the Open Inference Protocol's own field (not model.name).
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await oip_stub.ModelMetadata(pb.ModelMetadataRequest(name="../etc/passwd"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations(err.value)) == ["name"]
    assert (err.value.details() or "").startswith("name: invalid model name")


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_requests_are_invalid_argument_with_the_field(oip_stub, served: Served, case: str) -> None:
    build, field = BAD_REQUESTS[case]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await oip_stub.ModelInfer(build(served.mlp))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    found = violations(err.value)
    assert any(f.startswith(field) for f in found), (field, found)


async def test_triton_client_sees_the_same_codes(client, served: Served) -> None:
    x = np.zeros((1, 4), np.float32)
    cases = [
        ((served.mlp, [infer_input("features", x.astype(np.int32), "INT32")]), {}, "INVALID_ARGUMENT"),
        ((served.mlp, [infer_input("features", np.zeros((1, 5), np.float32), "FP32")]), {}, "INVALID_ARGUMENT"),
        ((served.mlp, [infer_input("features", x, "FP32")]), {"model_version": "Latest!"}, "INVALID_ARGUMENT"),
        ((served.mlp, [infer_input("features", x, "FP32")]), {"model_version": "latest"}, "NOT_FOUND"),  # a label
        (("no-such-model", [infer_input("features", x, "FP32")]), {}, "NOT_FOUND"),
        ((served.mlp, [infer_input("features", x, "FP32")]), {"model_version": "99"}, "NOT_FOUND"),
    ]
    for args, kwargs, code in cases:
        error = await call_error(client.infer, *args, **kwargs)
        assert error.status() == f"StatusCode.{code}", (args, kwargs, error.message())


async def test_stream_infer_reports_errors_in_stream(client, served: Served) -> None:
    x = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)

    def run() -> list[tuple[Any, Any]]:
        results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        try:
            client.async_stream_infer(served.mlp, [infer_input("features", x, "FP32")], request_id="a")
            client.async_stream_infer(served.mlp, [infer_input("features", x[:, :3].copy(), "FP32")], request_id="b")
            client.async_stream_infer(served.mlp, [infer_input("features", x, "FP32")], model_version="1")
            return [results.get(timeout=60) for _ in range(3)]
        finally:
            client.stop_stream()

    (first, error1), (_, error2), (third, error3) = await asyncio.to_thread(run)
    assert error1 is None and error3 is None
    assert first.get_response().id == "a"
    assert_close(first.as_numpy("score"), keras_outputs(served.files["mlp_v2"], x)["score"])
    assert_close(third.as_numpy("score"), keras_outputs(served.files["mlp_v1"], x)["score"])
    assert error2 is not None and 'inputs["features"].shape[1]' in error2.message()


async def test_triton_extensions_are_unimplemented(client, served: Served) -> None:
    error = await call_error(client.get_model_config, served.mlp)
    assert error.status() == "StatusCode.UNIMPLEMENTED"
    assert "Triton extension" in error.message()


async def test_grpcurl_through_reflection(app: Application, served: Served) -> None:
    code, out, err = await grpcurl("-plaintext", app.address, "list")
    assert code == 0, err
    assert "inference.GRPCInferenceService" in out.split()
    code, out, err = await grpcurl("-plaintext", app.address, "inference.GRPCInferenceService/ServerLive")
    assert code == 0, err
    assert json.loads(out) == {"live": True}
    request = json.dumps({"name": served.mlp})
    code, out, err = await grpcurl(
        "-plaintext", "-d", request, app.address, "inference.GRPCInferenceService/ModelMetadata"
    )
    assert code == 0, err
    assert json.loads(out)["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "4"]}]
