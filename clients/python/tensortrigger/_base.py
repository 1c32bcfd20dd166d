"""What ``Client`` and ``AsyncClient`` share besides messages: options, credentials, stubs, caches."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from tensortrigger._errors import TensorTriggerError
from tensortrigger._messages import HEALTH_CHECK, HEALTH_REQUEST, HEALTH_RESPONSE, ref_key
from tensortrigger._retry import SYSTEM_CLOCK, Clock, RetryPolicy
from tensortrigger.v1 import (
    inference_service_pb2_grpc,
    jobs_service_pb2_grpc,
    model_pb2,
    registry_service_pb2_grpc,
    tensor_pb2,
)

DEFAULT_ADDRESS = "127.0.0.1:50051"
Pem = bytes | str | os.PathLike[str]
"""PEM data as bytes, or the path of a PEM file."""


def _read_pem(value: Pem | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _is_loopback(address: str) -> bool:
    if address.startswith("unix:"):
        return True
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        address = address.removeprefix(scheme)
    host = address[1 : address.find("]")] if address.startswith("[") else address.rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BaseClient:
    """Options common to both clients. Subclasses open the channel (sync or asyncio) in ``_open``."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = RetryPolicy(),  # noqa: B008 - frozen, so sharing the default is safe
        tls: bool = False,
        root_certificates: Pem | None = None,
        client_certificate: Pem | None = None,
        client_key: Pem | None = None,
        token: str | None = None,
        max_message_bytes: int = 64 << 20,
        channel_options: Sequence[tuple[str, Any]] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """Connect to the server at ``address`` ("host:port").

        ``timeout``: default deadline in seconds of unary calls (None: none); every method also takes
        ``timeout=``. Streams (uploads, downloads, watches, batches, training) have no default deadline.
        ``retry``: how reads and ``predict`` are retried on UNAVAILABLE; None disables retries.
        ``tls``: use TLS, trusting gRPC's default roots (its bundled set, or the file named by
        GRPC_DEFAULT_SSL_ROOTS_FILE_PATH) unless ``root_certificates`` is given; giving any certificate implies
        ``tls``. ``client_certificate`` + ``client_key``: mutual TLS.
        ``token``: sent as ``authorization: Bearer <token>`` on every call. Refused on a plaintext channel
        to anything but loopback, where it would travel in clear.
        ``max_message_bytes``: largest message sent or received (gRPC's own default, 4 MiB, is too small for
        big batches; the server's default limit is 64 MiB).
        ``clock``: the time retries read deadlines on and wait with (the system's); a test passes a fake one.
        """
        tls = tls or any(v is not None for v in (root_certificates, client_certificate, client_key))
        if (client_certificate is None) != (client_key is None):
            raise ValueError("mutual TLS needs both client_certificate and client_key")
        if token is not None and not tls and not _is_loopback(address):
            raise ValueError("a bearer token needs TLS (tls=True) when the server is not on loopback")
        self.address = address
        self.timeout = timeout
        self.retry = retry
        self._clock = clock
        # Call metadata rather than grpc.access_token_call_credentials: gRPC refuses call credentials on a
        # plaintext channel, and a loopback sidecar (or a test) is a legitimate plaintext use.
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        credentials = (
            grpc.ssl_channel_credentials(
                root_certificates=_read_pem(root_certificates),
                private_key=_read_pem(client_key),
                certificate_chain=_read_pem(client_certificate),
            )
            if tls
            else None
        )
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *channel_options,
        ]
        channel = self._open(address, credentials, options)
        # The generated stubs work unchanged over a sync or an asyncio channel.
        self._registry = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
        self._inference = inference_service_pb2_grpc.InferenceServiceStub(channel)
        self._jobs = jobs_service_pb2_grpc.JobsServiceStub(channel)
        self._health = channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=HEALTH_REQUEST.SerializeToString,
            response_deserializer=HEALTH_RESPONSE.FromString,
        )
        # Signatures by model selector: they name a bare array and give the dtypes inputs are cast to. A selector
        # whose call fails with INVALID_ARGUMENT or NOT_FOUND is dropped, so a label moved to a version with
        # another signature is looked up again.
        self._signatures: dict[tuple[str, str, object], tensor_pb2.Signature] = {}

    def _open(self, address: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]) -> Any:
        raise NotImplementedError

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _forget_signature(self, ref: model_pb2.ModelRef, error: TensorTriggerError) -> None:
        if error.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
            self._signatures.pop(ref_key(ref), None)
