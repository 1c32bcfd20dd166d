"""The HTTP/JSON front: a transport beside ``api`` (gRPC) and ``compat``, over the same domain services.

* ``oip``: the Open Inference Protocol's REST binding (KServe v2 / Triton HTTP), binary tensor data included.
* ``tfserving``: TF Serving's REST API (``/v1/models/...``: status, metadata, predict, classify).
* ``tfaas``: TFaaS's routes (``/models``, ``/upload``, ``/delete``, ``/json``, ``/image``, ``/proto``).
* ``native``: Tensor Trigger's registry and jobs as JSON, with streamed uploads, job inputs and results.
* ``openapi``: ``/openapi.json`` and the ``/docs`` page.

``core`` wraps every route once with what gRPC's middleware does (request ids, auth and roles, rate limits,
metrics, the in-flight bound, the one error mapping); ``server`` runs them on the gRPC server's event loop.
The composition root (``tt_server.app``) calls ``build_http_server`` when ``TT_HTTP_ADDRESS`` is set.
"""

from __future__ import annotations

from collections.abc import Callable

from tt_server.api.auth import RateLimiter, TokenAuthenticator
from tt_server.api.middleware import AccessLog
from tt_server.config import Settings
from tt_server.jobs.service import JobsService
from tt_server.registry.service import Registry
from tt_server.rest.core import Front, Route
from tt_server.rest.native import NativeRoutes
from tt_server.rest.oip import OpenInferenceRoutes
from tt_server.rest.server import HttpServer, server_ssl_context
from tt_server.rest.tfaas import TfaasRoutes
from tt_server.rest.tfserving import TfServingRoutes
from tt_server.runtime.service import InferenceService

__all__ = ["HttpServer", "build_http_server"]


def build_http_server(
    settings: Settings,
    inference: InferenceService,
    registry: Registry,
    jobs: JobsService,
    auth: TokenAuthenticator | None,
    limiter: RateLimiter | None,
    is_ready: Callable[[], bool],
) -> HttpServer:
    routes: list[Route] = [
        *OpenInferenceRoutes(inference, registry, settings.max_request_elements, is_ready).routes(),
        *TfServingRoutes(inference, registry).routes(),
        *TfaasRoutes(inference, registry, settings).routes(),
        *NativeRoutes(registry, jobs).routes(),
    ]
    access = AccessLog(settings.access_log, settings.access_log_sample_ratio) if settings.access_log != "off" else None
    front = Front(auth, limiter, settings.max_concurrent_rpcs, access)
    tls = (
        server_ssl_context(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
        if settings.tls_cert_file is not None and settings.tls_key_file is not None
        else None
    )
    return HttpServer(routes, front, settings.max_message_bytes, settings.shutdown_grace_seconds, tls)
