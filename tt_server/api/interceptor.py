"""One server interceptor for what every RPC of our services needs: error mapping and metrics.

Each handler is wrapped once per method (cached): the wrapper times the call, turns exceptions into statuses
(``api.errors.status_for``) and counts the outcome by status code. One wrapper instead of a chain of
interceptors keeps the per-call cost of the Predict hot path to a single extra frame.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from tt_server import metrics
from tt_server.api.errors import status_for


class _Outcome:
    """Per-method metric children, resolved once instead of on every call."""

    def __init__(self, method: str) -> None:
        self.method = method
        self._seconds = metrics.RPC_SECONDS.labels(method)
        self._ok = metrics.RPCS.labels(method, "OK")

    def done(self, started: float, code: grpc.StatusCode | None) -> None:
        self._seconds.observe(time.perf_counter() - started)
        if code is None:
            self._ok.inc()
        else:
            metrics.RPCS.labels(self.method, code.name).inc()


async def _fail(context: grpc.aio.ServicerContext, exc: BaseException, outcome: _Outcome, started: float) -> None:
    status = status_for(exc, outcome.method)
    outcome.done(started, status.code)
    await context.abort(status.code, status.details, status.trailing_metadata)


def _wrap_unary(behavior: Callable[..., Any], outcome: _Outcome) -> Callable[..., Any]:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
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
        try:
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


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    outcome = _Outcome(method)
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
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
    """Wraps every RPC of the services in ``wrapped_services`` (full names); others pass through."""

    def __init__(self, wrapped_services: set[str]) -> None:
        self._services = wrapped_services
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or method.split("/")[1] not in self._services:
            return handler
        wrapped = _wrap(handler, method)
        self._cache[method] = wrapped
        return wrapped
