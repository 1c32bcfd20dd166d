"""One server interceptor for what every RPC needs: request ids, authentication, rate limits, error mapping,
metrics.

Every call gets a request id: the client's ``x-request-id`` metadata (made safe and bounded) or a fresh one. It is
set in ``logs.request_id`` for the call's task, so every log line of the call carries it, and sent back as
``x-request-id`` trailing metadata (streams also get it in their initial metadata, so it is known while they
run). Authentication (when a token file is configured) runs per call, before any request message is read, for every
service (health and reflection can be public). Our own services' handlers are also wrapped once per method
(cached): the wrapper applies the per-client rate limit, times the call, turns exceptions into statuses
(``api.errors.status_for``) and counts the outcome by status code. One wrapper instead of a chain of
interceptors keeps the per-call cost of the Predict hot path to a single extra frame.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from tt_server import metrics
from tt_server.api.auth import AuthError, RateLimiter, TokenAuthenticator
from tt_server.api.errors import status_for
from tt_server.errors import ResourceExhausted
from tt_server.logs import request_id

# Set by the interceptor for the call's task, read by the wrapper (same task) to key the rate limit.
_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("tt_caller", default=None)

REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID_LENGTH = 64
# A client's id lands in log lines and metadata: anything outside this set (newlines, quotes, non-ASCII) is
# replaced, so it can neither forge log lines nor break a header.
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._:/+=@-]")


def _request_id(metadata: Any) -> str:
    """The client's ``x-request-id`` made safe and bounded, else a fresh random one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            safe = _UNSAFE_ID_CHARS.sub("_", value[:MAX_REQUEST_ID_LENGTH])
            if safe.strip("_"):
                return safe
            break
    return secrets.token_hex(8)


def _id_metadata() -> tuple[tuple[str, str], ...]:
    current = request_id.get()
    return () if current is None else ((REQUEST_ID_KEY, current),)


class _Outcome:
    """Per-method metric children, resolved once instead of on every call, and the rate limiter."""

    def __init__(self, method: str, limiter: RateLimiter | None) -> None:
        self.method = method
        self.limiter = limiter
        self._seconds = metrics.RPC_SECONDS.labels(method)
        self._ok = metrics.RPCS.labels(method, "OK")

    def admit(self, context: grpc.aio.ServicerContext) -> None:
        if self.limiter is None:
            return
        client = _caller.get() or context.peer().rsplit(":", 1)[0]  # "ipv4:1.2.3.4:port" -> without port
        if not self.limiter.allow(client):
            raise ResourceExhausted("rate limit exceeded for this client; slow down and retry")

    def done(self, started: float, code: grpc.StatusCode | None) -> None:
        self._seconds.observe(time.perf_counter() - started)
        if code is None:
            self._ok.inc()
        else:
            metrics.RPCS.labels(self.method, code.name).inc()


async def _fail(context: grpc.aio.ServicerContext, exc: BaseException, outcome: _Outcome, started: float) -> None:
    status = status_for(exc, outcome.method)
    outcome.done(started, status.code)
    # abort()'s metadata replaces what set_trailing_metadata() set, so the id goes in again.
    await context.abort(status.code, status.details, (*status.trailing_metadata, *_id_metadata()))


def _wrap_unary(behavior: Callable[..., Any], outcome: _Outcome) -> Callable[..., Any]:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        context.set_trailing_metadata(_id_metadata())
        try:
            outcome.admit(context)
            response = await behavior(request_or_iterator, context)
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            outcome.done(started, grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            await _fail(context, exc, outcome, started)
        outcome.done(started, None)
        return response

    return handler


def _wrap_stream(behavior: Callable[..., Any], outcome: _Outcome) -> Callable[..., Any]:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.perf_counter()
        ids = _id_metadata()
        context.set_trailing_metadata(ids)
        try:
            await context.send_initial_metadata(ids)
            outcome.admit(context)
            async for response in behavior(request_or_iterator, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            outcome.done(started, grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            await _fail(context, exc, outcome, started)
        outcome.done(started, None)

    return handler


def _kwargs(handler: grpc.RpcMethodHandler) -> dict[str, Any]:
    return {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that fails at once, before reading any request."""

    async def refuse(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message, _id_metadata())

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **_kwargs(handler))
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, **_kwargs(handler))
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **_kwargs(handler))
    return grpc.stream_stream_rpc_method_handler(refuse, **_kwargs(handler))


def _wrap(handler: grpc.RpcMethodHandler, method: str, limiter: RateLimiter | None) -> grpc.RpcMethodHandler:
    outcome = _Outcome(method, limiter)
    kwargs = _kwargs(handler)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary, outcome), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary, outcome), **kwargs)
    behavior = handler.unary_stream or handler.stream_stream
    # Generated base classes implement not-yet-written streaming RPCs as plain functions that raise; only
    # async generators can be wrapped by iterating them.
    wrapped = (
        _wrap_stream(behavior, outcome) if inspect.isasyncgenfunction(behavior) else _wrap_unary(behavior, outcome)
    )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrapped, **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrapped, **kwargs)


class ServingInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call (when ``auth`` is set) and wraps every RPC of ``wrapped_services``."""

    def __init__(
        self,
        wrapped_services: set[str],
        auth: TokenAuthenticator | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._services = wrapped_services
        self._auth = auth
        self._limiter = limiter
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        # intercept_service runs in the call's own task, so the id is seen by the handler and everything it logs.
        request_id.set(_request_id(handler_call_details.invocation_metadata))
        handler = self._cache.get(method)
        if handler is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            if method.split("/")[1] in self._services:
                handler = _wrap(handler, method, self._limiter)
            self._cache[method] = handler
        if self._auth is not None and not self._auth.is_public(method):
            metadata = dict(handler_call_details.invocation_metadata or ())
            try:
                identity = self._auth.authorize(method, metadata.get("authorization"))
            except AuthError as e:
                code = grpc.StatusCode.PERMISSION_DENIED if e.permission else grpc.StatusCode.UNAUTHENTICATED
                metrics.RPCS.labels(method, code.name).inc()
                return _refusal(handler, code, e.message)
            _caller.set(identity.name)
        return handler
