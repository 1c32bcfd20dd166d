"""What every HTTP route needs, applied by wrapping its handler once at registration (as ``api.middleware`` does
for gRPC): request ids, authentication and roles, the per-client rate limit, the in-flight bound, metrics and
the one error mapping.

Each route names the gRPC method it stands for (``Route.rpc``): the token file's roles, the public health and
reflection switches and the rate limiter apply exactly as they do to that method, and the limiter's buckets are
shared, so a client cannot double its rate by using both transports. Errors go through ``api.errors.status_for``
(the gRPC mapping) and then ``HTTP_STATUS``: every route answers an error with the same JSON body::

    {"error": "<message>", "code": "INVALID_ARGUMENT", "request_id": "...",
     "field_violations": [{"field": "...", "description": "..."}]}

``error`` is what TF Serving's, Triton's and TFaaS's clients read; the other keys are ours.
Metrics use the gRPC families (``tt_rpcs_total``, ``tt_rpc_duration_seconds``) with ``method`` set to
``"HTTP <verb> <route template>"``, a bounded set of label values.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web

from tt_server import metrics
from tt_server.api.auth import AuthError, RateLimiter, TokenAuthenticator
from tt_server.api.errors import status_for
from tt_server.api.middleware import REQUEST_ID_KEY, AccessLog, request_id_for
from tt_server.errors import InvalidArgument, ResourceExhausted
from tt_server.logs import caller as caller_name
from tt_server.logs import request_id, served_model

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# gRPC code -> HTTP status, as Google's API design guide maps them (google.rpc.Code).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

HEALTH_RPC = "/grpc.health.v1.Health/Check"  # public when TT_AUTH_PUBLIC_HEALTH is (the default)
DOCS_RPC = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"  # public when reflection is


@dataclass(frozen=True)
class Route:
    """One HTTP route: ``rpc`` is the gRPC method whose role and limits it takes; the rest feeds /openapi.json."""

    method: str
    path: str
    handler: Handler
    rpc: str
    tag: str
    summary: str
    body: str | None = None  # request body media type, for the OpenAPI document
    query: tuple[str, ...] = ()  # query parameters, for the OpenAPI document
    response: str = "application/json"
    schema: dict[str, Any] | None = None  # JSON Schema of the request body, for the OpenAPI document


class HttpError(Exception):
    """A transport-level refusal with its own gRPC code (the domain has no error for it)."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status or HTTP_STATUS[code]


def error_response(
    code: grpc.StatusCode,
    message: str,
    rid: str,
    violations: list[dict[str, str]] | None = None,
    http_status: int | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": message, "code": code.name, "request_id": rid}
    if violations:
        body["field_violations"] = violations
    return web.Response(
        status=http_status or HTTP_STATUS[code],
        text=json.dumps(body),
        content_type="application/json",
        headers={REQUEST_ID_KEY: rid},
    )


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, separators=(",", ":")), content_type="application/json")


async def read_json(request: web.Request, what: str = "body") -> Any:
    """The request body parsed as JSON (capped at TT_MAX_MESSAGE_BYTES by the server), or INVALID_ARGUMENT."""
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidArgument.field(what, f"not valid JSON: {e}") from None


def whole_number(raw: str, field: str, maximum: int, what: str = "a non-negative integer") -> int:
    """``raw`` (a path segment, query parameter or header) as an integer from 0 to ``maximum``, or
    INVALID_ARGUMENT naming ``field``. ASCII digits only: ``str.isdigit`` also takes "²", which ``int`` refuses."""
    if not (raw.isascii() and raw.isdigit()) or int(raw) > maximum:
        raise InvalidArgument.field(field, f"{raw[:40]!r} is not {what}")
    return int(raw)


async def body_chunks(request: web.Request, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """The request body as it arrives, never held whole: the domain enforces its own size caps."""
    while True:
        chunk = await request.content.read(size)
        if not chunk:
            return
        yield chunk


def peer_key(remote: str | None) -> str:
    """The rate limiter's key for an unauthenticated client, spelled as gRPC's peer address without its port
    ("ipv4:1.2.3.4", "ipv6:[::1]"), so one client has one bucket whichever transport it uses."""
    if not remote:
        return ""
    return f"ipv6:[{remote}]" if ":" in remote else f"ipv4:{remote}"


class Front:
    """Wraps route handlers with the checks above; ``in_flight`` counts requests being served."""

    def __init__(
        self,
        auth: TokenAuthenticator | None,
        limiter: RateLimiter | None,
        max_in_flight: int | None,
        access: AccessLog | None = None,
    ) -> None:
        self._auth = auth
        self._limiter = limiter
        self._max_in_flight = max_in_flight
        self._access = access  # TT_ACCESS_LOG: the same lines as gRPC calls, method "HTTP <verb> <route>"
        self.in_flight = 0
        self.idle = asyncio.Event()  # set while no request is in flight (the drain waits for it)
        self.idle.set()

    def wrap(self, route: Route) -> Handler:
        label = f"HTTP {route.method} {route.path}"
        seconds = metrics.RPC_SECONDS.labels(label)
        ok = metrics.RPCS.labels(label, "OK")
        auth = self._auth if self._auth is not None and not self._auth.is_public(route.rpc) else None
        # Health and the docs are not rate limited, as on gRPC (the limiter covers our services only).
        limiter = self._limiter if route.rpc not in (HEALTH_RPC, DOCS_RPC) else None
        handler = route.handler
        rpc = route.rpc
        access = self._access

        async def wrapped(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            rid = request_id_for(request.headers.get(REQUEST_ID_KEY))
            request_id.set(rid)
            served_model.set(None)  # a keep-alive connection's earlier request must not name this one's model
            caller_name.set(None)  # nor its caller
            self.in_flight += 1
            self.idle.clear()
            try:
                caller = None
                if auth is not None:
                    caller = auth.authorize(rpc, request.headers.get("Authorization")).name
                    caller_name.set(caller)
                if limiter is not None and not limiter.allow(caller or peer_key(request.remote)):
                    raise ResourceExhausted("rate limit exceeded for this client; slow down and retry")
                if self._max_in_flight is not None and self.in_flight > self._max_in_flight:
                    raise ResourceExhausted("too many requests in progress; retry later")
                response = await handler(request)
            except (asyncio.CancelledError, ConnectionResetError):
                # The client went away (aiohttp cancels the handler, or a body read finds the connection gone), or
                # the drain's grace ran out: a cancelled call, as on gRPC, not a server error.
                metrics.RPCS.labels(label, "CANCELLED").inc()
                if access is not None:
                    access.record(label, grpc.StatusCode.CANCELLED, time.perf_counter() - started)
                raise
            except Exception as exc:
                response, code = self._failure(exc, rpc, rid)
                if isinstance(exc, web.RequestPayloadError):
                    # The rest of the body cannot be read: close the connection after the answer, and mark the
                    # body done so aiohttp does not try to drain it (and log the same error again as unhandled).
                    response.force_close()
                    request.content.feed_eof()
                metrics.RPCS.labels(label, code.name).inc()
                elapsed = time.perf_counter() - started
                seconds.observe(elapsed)
                if access is not None:
                    access.record(label, code, elapsed)
                return response
            finally:
                self.in_flight -= 1
                if not self.in_flight:
                    self.idle.set()
            if not response.prepared:  # a streamed response sent its headers already
                response.headers[REQUEST_ID_KEY] = rid
            ok.inc()
            elapsed = time.perf_counter() - started
            seconds.observe(elapsed)
            if access is not None:
                access.record(label, None, elapsed)
            return response

        return wrapped

    @staticmethod
    def _failure(exc: Exception, rpc: str, rid: str) -> tuple[web.Response, grpc.StatusCode]:
        if isinstance(exc, AuthError):
            code = grpc.StatusCode.PERMISSION_DENIED if exc.permission else grpc.StatusCode.UNAUTHENTICATED
            response = error_response(code, exc.message, rid)
            if not exc.permission:
                response.headers["WWW-Authenticate"] = "Bearer"
        elif isinstance(exc, HttpError):
            code = exc.code
            response = error_response(code, exc.message, rid, http_status=exc.http_status)
        elif isinstance(exc, web.HTTPRequestEntityTooLarge):
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            response = error_response(code, f"the request body is too large ({exc.text})", rid, http_status=413)
        elif isinstance(exc, web.RequestPayloadError):
            # The body's framing or Content-Encoding is broken (aiohttp found it while the handler read it).
            code = grpc.StatusCode.INVALID_ARGUMENT
            reason = " ".join(str(exc).split()).removeprefix("400, message: ")
            message = f"the request body could not be read ({reason})"
            response = error_response(code, f"body: {message}", rid, [{"field": "body", "description": message}])
        else:
            status = status_for(exc, rpc)
            code = status.code
            violations = (
                [{"field": v.field, "description": v.description} for v in exc.violations]
                if isinstance(exc, InvalidArgument)
                else None
            )
            response = error_response(code, status.details, rid, violations)
        return response, code
