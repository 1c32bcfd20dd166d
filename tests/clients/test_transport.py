"""Transport options against the real server: bearer tokens (with authentication on), TLS and mutual TLS, from
the library and from ``tt``."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensortrigger as tt

# cryptography comes with moto (a dev dependency), which signs S3 requests with it.
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests import models
from tests.clients.helpers import tt_cli
from tests.serving import server_settings
from tt_server.app import Application
from tt_server.config import Settings

needs_server_security = pytest.mark.skipif(
    not {"auth_tokens_file", "tls_client_ca_file"} <= set(Settings.model_fields),
    reason="pending server side: bearer-token authentication and TLS settings",
)


@dataclass
class Pems:
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes


def _issue(name: str, issuer: Any, issuer_key: Any, *, ca: bool = False, ip: str | None = None) -> tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert, key


def _pem(cert: Any, key: Any) -> tuple[bytes, bytes]:
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


@pytest.fixture(scope="module")
def pems() -> Pems:
    ca, ca_key = _issue("tt-test-ca", None, None, ca=True)
    server, server_key = _issue("tt-test-server", ca, ca_key, ip="127.0.0.1")
    client, client_key = _issue("tt-test-client", ca, ca_key)
    server_pem, server_key_pem = _pem(server, server_key)
    client_pem, client_key_pem = _pem(client, client_key)
    return Pems(ca.public_bytes(serialization.Encoding.PEM), server_pem, server_key_pem, client_pem, client_key_pem)


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.mlp_keras(tmp_path_factory.mktemp("transport-models"))


@pytest.fixture(scope="module")
def pem_files(pems: Pems, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("pems")
    files = {
        "ca": pems.ca,
        "server_cert": pems.server_cert,
        "server_key": pems.server_key,
        "client_cert": pems.client_cert,
        "client_key": pems.client_key,
    }
    for name, data in files.items():
        (out / f"{name}.pem").write_bytes(data)
    return {name: out / f"{name}.pem" for name in files}


@pytest.fixture(scope="module")
async def secure_app(pem_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A real server that wants a client certificate signed by the test CA and a bearer token."""
    data = tmp_path_factory.mktemp("secure-server")
    (data / "tokens").write_text("reader read-token ci-reader\nwriter write-token ci-writer\n")
    app = Application(
        server_settings(
            data,
            auth_tokens_file=data / "tokens",
            tls_cert_file=pem_files["server_cert"],
            tls_key_file=pem_files["server_key"],
            tls_client_ca_file=pem_files["ca"],
        )
    )
    await app.start()
    yield app.address
    await app.stop(grace=0.5)


def test_bearer_token_needs_tls_off_loopback(pems: Pems) -> None:
    with pytest.raises(ValueError, match="needs TLS"):
        tt.Client("models.example.com:443", token="s3cret")
    for loopback in ("localhost:50051", "[::1]:50051", "127.0.0.2:1", "unix:/tmp/tt.sock"):
        tt.Client(loopback, token="s3cret").close()
    tt.Client("models.example.com:443", token="s3cret", root_certificates=pems.ca).close()  # TLS implied
    with pytest.raises(ValueError, match="both"):
        tt.Client("127.0.0.1:1", client_certificate=pems.client_cert)


@needs_server_security
async def test_mutual_tls_and_tokens(secure_app: str, pems: Pems, pem_files: dict[str, Path], mlp_file: Path) -> None:
    # PEM options take bytes or paths.
    identity = {
        "root_certificates": pem_files["ca"],
        "client_certificate": pems.client_cert,
        "client_key": pems.client_key,
    }
    async with tt.AsyncClient(secure_app, token="write-token", **identity) as writer:
        await writer.upload("secure", mlp_file)
        assert (await writer.predict("secure", np.zeros((2, 4))))["score"].shape == (2, 1)
    async with tt.AsyncClient(secure_app, token="read-token", **identity) as reader:
        assert (await reader.get_model("secure")).latest_version == 1
        with pytest.raises(tt.PermissionDeniedError):
            await reader.delete_model("secure")
    async with tt.AsyncClient(secure_app, **identity) as anonymous:
        assert await anonymous.health() == "SERVING"  # probes need no token
        with pytest.raises(tt.UnauthenticatedError):
            await anonymous.get_model("secure")

    def blocking() -> int:
        with tt.Client(secure_app, token="read-token", **identity) as client:
            return client.get_model("secure").version_count

    assert await asyncio.to_thread(blocking) == 1

    # Without a client certificate, or in plaintext, the handshake fails: the server is unreachable.
    for options in ({"root_certificates": pems.ca}, {}):
        async with tt.AsyncClient(secure_app, token="read-token", retry=None, timeout=5, **options) as client:
            with pytest.raises(tt.UnavailableError):
                await client.get_model("secure")


@needs_server_security
async def test_cli_with_tls_and_token(secure_app: str, pem_files: dict[str, Path], mlp_file: Path) -> None:
    files = ["--ca-file", str(pem_files["ca"]), "--cert-file", str(pem_files["client_cert"])]
    files += ["--key-file", str(pem_files["client_key"])]
    uploaded = await tt_cli(
        *files, "--token", "write-token", "models", "upload", "cli-secure", str(mlp_file), address=secure_app
    )
    assert uploaded.code == 0, uploaded.err
    shown = await tt_cli(
        "--json", *files, "models", "show", "cli-secure", address=secure_app, env={"TT_TOKEN": "read-token"}
    )
    assert shown.code == 0 and shown.json()["model"]["latest_version"] == 1
    assert (await tt_cli(*files, "models", "show", "cli-secure", address=secure_app)).code == 1  # no token
    assert (await tt_cli("--timeout", "2", "models", "list", address=secure_app)).code == 5  # plaintext
