"""Request ids: taken from the client's x-request-id (made safe) or made fresh, returned as metadata, carried by
every log line of the call, and used as the error id of INTERNAL errors."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from tensortrigger.v1 import model_pb2, registry_service_pb2_grpc
from tensortrigger.v1 import registry_service_pb2 as rpb

from tests.api.helpers import upload
from tests.ops.helpers import constant_artifacts
from tests.serving import server_settings, unique_name
from tt_server.app import Application
from tt_server.logs import JsonFormatter, RequestIdFilter

KEY = "x-request-id"


@pytest.fixture(scope="module")
async def app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Application]:
    application = Application(server_settings(tmp_path_factory.mktemp("ids")))
    await application.start()
    yield application
    await application.stop(grace=1.0)


@pytest.fixture(scope="module")
async def stub(app: Application) -> AsyncIterator[registry_service_pb2_grpc.ModelRegistryServiceStub]:
    async with grpc.aio.insecure_channel(app.address) as channel:
        yield registry_service_pb2_grpc.ModelRegistryServiceStub(channel)


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the server logs while the test runs, formatted as in production (JSON, request id filter)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def _records(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def _trailing_id(call: grpc.aio.UnaryUnaryCall) -> str:
    await call
    return dict(await call.trailing_metadata())[KEY]


async def test_client_id_is_returned(stub) -> None:
    call = stub.ListModels(rpb.ListModelsRequest(), metadata=((KEY, "order-42.attempt:1"),))
    assert await _trailing_id(call) == "order-42.attempt:1"


async def test_fresh_id_when_the_client_sends_none(stub) -> None:
    first = await _trailing_id(stub.ListModels(rpb.ListModelsRequest()))
    second = await _trailing_id(stub.ListModels(rpb.ListModelsRequest()))
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", first)
    assert first != second
    assert first.split("-")[0] == second.split("-")[0]  # one random prefix per process, then a counter


@pytest.mark.parametrize(
    ("sent", "returned"),
    [
        ("a b\"c'd<e>", "a_b_c_d_e_"),  # no spaces, quotes or markup reach a log line
        ("{id};$(rm)|x", "_id____rm__x"),  # gRPC clients send printable ASCII only; all but a safe set is replaced
        ("x" * 500, "x" * 64),  # bounded
    ],
)
async def test_client_id_is_made_safe(stub, sent: str, returned: str) -> None:
    call = stub.ListModels(rpb.ListModelsRequest(), metadata=((KEY, sent),))
    assert await _trailing_id(call) == returned


async def test_an_unusable_client_id_is_replaced(stub) -> None:
    call = stub.ListModels(rpb.ListModelsRequest(), metadata=((KEY, "   "),))
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", await _trailing_id(call))


async def test_errors_carry_the_id(stub) -> None:
    call = stub.GetModel(rpb.GetModelRequest(name="no-such-model"), metadata=((KEY, "lost-1"),))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(err.value.trailing_metadata() or ())[KEY] == "lost-1"


async def test_streams_send_the_id_before_the_first_message(stub, tmp_path: Path) -> None:
    name = unique_name("ids")
    await upload(stub, name, constant_artifacts(tmp_path, 1.0)[0])
    call = stub.DownloadModelVersion(
        rpb.DownloadModelVersionRequest(model=model_pb2.ModelRef(name=name)), metadata=((KEY, "dl-1"),)
    )
    assert dict(await call.initial_metadata())[KEY] == "dl-1"
    assert [chunk async for chunk in call]
    assert dict(await call.trailing_metadata())[KEY] == "dl-1"


async def test_log_lines_of_a_call_carry_its_id(stub, json_lines: io.StringIO, tmp_path: Path) -> None:
    name = unique_name("ids")
    await upload(stub, name, constant_artifacts(tmp_path, 1.0)[0])  # no id sent: one made up
    await upload(stub, name, constant_artifacts(tmp_path, 2.0)[0], labels=["prod"])
    call = stub.UploadModelVersion(_requests(name, constant_artifacts(tmp_path, 3.0)[0]), metadata=((KEY, "upload-7"),))
    await call
    uploaded = [r for r in _records(json_lines) if r["message"] == "model version uploaded" and r["model"] == name]
    assert [r.get("request_id") for r in uploaded][-1] == "upload-7"
    assert all(isinstance(r.get("request_id"), str) for r in uploaded)
    assert len({r["request_id"] for r in uploaded}) == 3
    # Lines logged outside any call (here: by the test itself) have none.
    logging.getLogger("tests").warning("outside")
    assert "request_id" not in _records(json_lines)[-1]


async def _requests(name: str, path: Path) -> AsyncIterator[rpb.UploadModelVersionRequest]:
    yield rpb.UploadModelVersionRequest(header=rpb.UploadHeader(model_name=name))
    yield rpb.UploadModelVersionRequest(chunk=path.read_bytes())  # noqa: ASYNC240 - a small file


async def test_internal_error_id_is_the_request_id(
    app: Application, stub, json_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.registry, "list_models", broken)
    call = stub.ListModels(rpb.ListModelsRequest(), metadata=((KEY, "ticket-99"),))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal error (error id ticket-99)"
    assert dict(err.value.trailing_metadata() or ())[KEY] == "ticket-99"
    (logged,) = [r for r in _records(json_lines) if r["level"] == "ERROR"]
    assert logged["request_id"] == "ticket-99"
    assert "secret internals" in str(logged["exception"])


async def test_calls_refused_by_authentication_carry_the_id(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("reader reader-token-0123456789 alice\n")
    application = Application(server_settings(tmp_path / "data", auth_tokens_file=tokens))
    await application.start()
    try:
        async with grpc.aio.insecure_channel(application.address) as channel:
            stub = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListModels(rpb.ListModelsRequest(), metadata=((KEY, "no-token-1"),))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert dict(err.value.trailing_metadata() or ())[KEY] == "no-token-1"
    finally:
        await application.stop(grace=0.5)
