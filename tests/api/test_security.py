"""Security: bearer tokens and roles, TLS and mutual TLS, per-client rate limits — on a real server."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensortrigger.v1 import registry_service_pb2 as pb
from tensortrigger.v1 import registry_service_pb2_grpc

from tests.serving import server_settings
from tt_server.app import Application

TOKENS = """
# role   token            name
reader   r-secret-123     alice
writer   w-secret-456     ci
admin    a-secret-789     ops
"""


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_tokens_and_roles(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    application = Application(server_settings(tmp_path, auth_tokens_file=tokens))
    await application.start()
    try:
        async with grpc.aio.insecure_channel(application.address) as ch:
            stub = registry_service_pb2_grpc.ModelRegistryServiceStub(ch)
            # Health is public by default (probes and sidecars carry no token).
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING

            for metadata in ((), _bearer("wrong"), (("authorization", "Basic abc"),)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.ListModels(pb.ListModelsRequest(), metadata=metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

            for token in ("r-secret-123", "w-secret-456", "a-secret-789"):  # everyone may read
                await stub.ListModels(pb.ListModelsRequest(), metadata=_bearer(token))

            for token in ("r-secret-123", "w-secret-456"):  # only admins manage labels
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.SetLabel(pb.SetLabelRequest(name="m", label="x", version=1), metadata=_bearer(token))
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as err:  # admin passes auth and reaches the registry
                await stub.SetLabel(
                    pb.SetLabelRequest(name="m", label="x", version=1), metadata=_bearer("a-secret-789")
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

            async def upload_header():
                yield pb.UploadModelVersionRequest(header=pb.UploadHeader(model_name="m"))

            with pytest.raises(grpc.aio.AioRpcError) as err:  # readers cannot upload; refused before any data
                await stub.UploadModelVersion(upload_header(), metadata=_bearer("r-secret-123"))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as err:  # writers can (the artifact is simply empty)
                await stub.UploadModelVersion(upload_header(), metadata=_bearer("w-secret-456"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await application.stop(grace=1.0)


def _certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("tt-test-ca", ca_key, None, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    return {
        "ca": _pem(ca),
        "server_cert": _pem(_certificate("localhost", server_key, (ca, ca_key), ca=False)),
        "server_key": _key_pem(server_key),
        "client_cert": _pem(_certificate("client", client_key, (ca, ca_key), ca=False)),
        "client_key": _key_pem(client_key),
    }


async def _list(address: str, credentials: grpc.ChannelCredentials) -> None:
    options = (("grpc.ssl_target_name_override", "localhost"),)
    async with grpc.aio.secure_channel(address, credentials, options=options) as ch:
        await registry_service_pb2_grpc.ModelRegistryServiceStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
async def test_tls_and_mtls(tmp_path: Path, pki: dict[str, bytes], mutual: bool) -> None:
    for name, data in pki.items():
        (tmp_path / name).write_bytes(data)
    settings = server_settings(
        tmp_path,
        tls_cert_file=tmp_path / "server_cert",
        tls_key_file=tmp_path / "server_key",
        tls_client_ca_file=(tmp_path / "ca") if mutual else None,
    )
    application = Application(settings)
    await application.start()
    try:
        address = application.address
        with_client_cert = grpc.ssl_channel_credentials(pki["ca"], pki["client_key"], pki["client_cert"])
        await _list(address, with_client_cert)
        server_only = grpc.ssl_channel_credentials(pki["ca"])
        if mutual:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _list(address, server_only)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        else:
            await _list(address, server_only)
        async with grpc.aio.insecure_channel(address) as plain:  # plaintext is refused on a TLS port
            with pytest.raises(grpc.aio.AioRpcError):
                await registry_service_pb2_grpc.ModelRegistryServiceStub(plain).ListModels(
                    pb.ListModelsRequest(), timeout=5
                )
    finally:
        await application.stop(grace=1.0)


async def test_per_client_rate_limit(tmp_path: Path) -> None:
    application = Application(server_settings(tmp_path, rate_limit_per_second=1.0, rate_limit_burst=5))
    await application.start()
    try:
        async with grpc.aio.insecure_channel(application.address) as ch:
            stub = registry_service_pb2_grpc.ModelRegistryServiceStub(ch)
            codes = []
            for _ in range(8):
                try:
                    await stub.ListModels(pb.ListModelsRequest())
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as e:
                    codes.append(e.code())
            assert codes[:5] == [grpc.StatusCode.OK] * 5
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[5:]
    finally:
        await application.stop(grace=1.0)
