"""Auth, roles, rate limits and TLS behave the same on both transports: each scenario runs over gRPC and over
HTTP against one server, and must end with the same status code (HTTP's error body names the gRPC code)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensortrigger.v1 import registry_service_pb2 as pb
from tensortrigger.v1 import registry_service_pb2_grpc
from tritonclient.grpc import service_pb2 as oip
from tritonclient.grpc import service_pb2_grpc as oip_grpc

from tests.api.test_security import TOKENS, pki  # noqa: F401 - the throwaway CA fixture
from tests.serving import server_settings
from tt_server.app import Application

READER, WRITER, ADMIN = "r-secret-123", "w-secret-456", "a-secret-789"
BIG = 300 * 1024  # over the server's 256 KiB TT_MAX_MESSAGE_BYTES


class Grpc:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._registry = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        self._oip = oip_grpc.GRPCInferenceServiceStub(channel)

    async def _code(self, call, token: str | None) -> str:  # type: ignore[no-untyped-def]
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            await call(metadata)
        except grpc.aio.AioRpcError as e:
            return e.code().name
        return "OK"

    async def list_models(self, token: str | None) -> str:
        return await self._code(lambda md: self._registry.ListModels(pb.ListModelsRequest(), metadata=md), token)

    async def set_label(self, token: str | None) -> str:
        request = pb.SetLabelRequest(name="m", label="x", version=1)
        return await self._code(lambda md: self._registry.SetLabel(request, metadata=md), token)

    async def upload(self, token: str | None) -> str:
        async def header() -> AsyncIterator[pb.UploadModelVersionRequest]:
            yield pb.UploadModelVersionRequest(header=pb.UploadHeader(model_name="m"))

        return await self._code(lambda md: self._registry.UploadModelVersion(header(), metadata=md), token)

    async def health(self, token: str | None) -> str:
        return await self._code(lambda md: self._health.Check(health_pb2.HealthCheckRequest(), metadata=md), token)

    async def infer(self, token: str | None) -> str:
        request = oip.ModelInferRequest(model_name="no-such-model")
        request.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
        return await self._code(lambda md: self._oip.ModelInfer(request, metadata=md), token)

    async def too_big(self, token: str | None) -> str:
        request = oip.ModelInferRequest(model_name="m", raw_input_contents=[b"\0" * BIG])
        request.inputs.add(name="x", datatype="FP32", shape=[BIG // 4])
        return await self._code(lambda md: self._oip.ModelInfer(request, metadata=md), token)


class Http:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def _code(self, method: str, path: str, token: str | None, **kwargs: object) -> str:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self._session.request(method, path, headers=headers, **kwargs) as response:  # type: ignore[arg-type]
            if response.status == 200:
                return "OK"
            body = await response.json()
            assert body["error"] and body["request_id"]
            return body["code"]

    async def list_models(self, token: str | None) -> str:
        return await self._code("GET", "/api/v1/models", token)

    async def set_label(self, token: str | None) -> str:
        return await self._code("PUT", "/api/v1/models/m/labels/x", token, json={"version": 1})

    async def upload(self, token: str | None) -> str:
        return await self._code("POST", "/api/v1/models/m/versions", token, data=b"")

    async def health(self, token: str | None) -> str:
        return await self._code("GET", "/v2/health/live", token)

    async def infer(self, token: str | None) -> str:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
        return await self._code("POST", "/v2/models/no-such-model/infer", token, json=body)

    async def too_big(self, token: str | None) -> str:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [BIG], "data": [0] * BIG}]}
        return await self._code("POST", "/v2/models/m/infer", token, json=body)


@pytest.fixture(scope="module")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Application]:
    folder = tmp_path_factory.mktemp("secured")
    (folder / "tokens").write_text(TOKENS)
    application = Application(
        server_settings(
            folder,
            http_address="127.0.0.1:0",
            auth_tokens_file=folder / "tokens",
            rate_limit_per_second=0.5,
            rate_limit_burst=1000,  # the rate limit test below uses its own server
            max_message_bytes=256 * 1024,
        )
    )
    await application.start()
    yield application
    await application.stop(grace=1.0)


@pytest.fixture(scope="module", params=["grpc", "http"])
async def transport(request: pytest.FixtureRequest, secured: Application) -> AsyncIterator[Grpc | Http]:
    if request.param == "grpc":
        async with grpc.aio.insecure_channel(secured.address) as channel:
            yield Grpc(channel)
    else:
        async with aiohttp.ClientSession(secured.http_url) as session:
            yield Http(session)


SCENARIOS = [
    ("list_models", None, "UNAUTHENTICATED"),
    ("list_models", "wrong", "UNAUTHENTICATED"),
    ("list_models", READER, "OK"),
    ("list_models", WRITER, "OK"),
    ("list_models", ADMIN, "OK"),
    ("set_label", READER, "PERMISSION_DENIED"),
    ("set_label", WRITER, "PERMISSION_DENIED"),
    ("set_label", ADMIN, "NOT_FOUND"),  # past auth, into the registry
    ("upload", READER, "PERMISSION_DENIED"),
    ("upload", WRITER, "INVALID_ARGUMENT"),  # allowed; the artifact is empty
    ("health", None, "OK"),  # health is public by default
    ("infer", None, "UNAUTHENTICATED"),
    ("infer", READER, "NOT_FOUND"),
    ("too_big", READER, "RESOURCE_EXHAUSTED"),  # gRPC: message size; HTTP: 413 for the body
]


@pytest.mark.parametrize(("action", "token", "code"), SCENARIOS)
async def test_same_answer_on_both_transports(
    transport: Grpc | Http, action: str, token: str | None, code: str
) -> None:
    assert await getattr(transport, action)(token) == code


async def test_rate_limit_is_one_bucket_across_transports(tmp_path: Path) -> None:
    application = Application(
        server_settings(tmp_path, http_address="127.0.0.1:0", rate_limit_per_second=0.5, rate_limit_burst=6)
    )
    await application.start()
    try:
        async with (
            grpc.aio.insecure_channel(application.address) as channel,
            aiohttp.ClientSession(application.http_url) as session,
        ):
            grpc_side, http_side = Grpc(channel), Http(session)
            codes = []
            for _ in range(4):
                codes += [await grpc_side.list_models(None), await http_side.list_models(None)]
            assert codes[:6] == ["OK"] * 6
            assert codes[6:] == ["RESOURCE_EXHAUSTED"] * 2
            async with session.get("/api/v1/models") as response:
                assert response.status == 429
            assert await http_side.health(None) == "OK"  # probes are never rate limited
    finally:
        await application.stop(grace=1.0)


async def test_http_port_uses_the_grpc_ports_tls(tmp_path: Path, pki: dict[str, bytes]) -> None:  # noqa: F811
    for name, data in pki.items():
        (tmp_path / name).write_bytes(data)
    settings = server_settings(
        tmp_path,
        http_address="127.0.0.1:0",
        tls_cert_file=tmp_path / "server_cert",
        tls_key_file=tmp_path / "server_key",
        tls_client_ca_file=tmp_path / "ca",
    )
    application = Application(settings)
    await application.start()
    try:
        assert application.http_url.startswith("https://")
        context = ssl.create_default_context(cafile=str(tmp_path / "ca"))
        context.check_hostname = False
        with pytest.raises(aiohttp.ClientError):  # mTLS: no client certificate, no connection
            async with aiohttp.ClientSession() as s, s.get(application.http_url + "/v2/health/live", ssl=context):
                pass
        context.load_cert_chain(tmp_path / "client_cert", tmp_path / "client_key")
        async with aiohttp.ClientSession() as s, s.get(application.http_url + "/v2/health/live", ssl=context) as r:
            assert r.status == 200
        with pytest.raises(aiohttp.ClientError):  # plain HTTP is refused on the TLS port
            async with aiohttp.ClientSession() as s, s.get(application.http_url.replace("https", "http") + "/v2"):
                pass
    finally:
        await application.stop(grace=1.0)
