"""The one place where exceptions become gRPC statuses.

``ErrorInterceptor`` wraps every handler: domain errors (``tt_server.errors``) map straight to their status code
with the domain message; ``InvalidArgument`` also carries a ``google.rpc.BadRequest`` with one field violation
per offending field (``grpc-status-details-bin``). Anything unexpected is logged with its traceback and an error
id, and the client gets ``INTERNAL`` with only that id: no internals leak.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tt_server import errors

log = logging.getLogger(__name__)

_CODES: dict[type[errors.TensorTriggerError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_for(exc: BaseException, method: str) -> grpc.Status:
    """The status a client sees for ``exc`` raised while serving ``method``."""
    if isinstance(exc, errors.TensorTriggerError):
        code = next(c for cls, c in _CODES.items() if isinstance(exc, cls))
        details = []
        if isinstance(exc, errors.InvalidArgument) and exc.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in exc.violations
                ]
            )
            detail = any_pb2.Any()
            detail.Pack(bad_request)
            details.append(detail)
        return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=exc.message, details=details))
    if isinstance(exc, NotImplementedError):
        return rpc_status.to_status(
            status_pb2.Status(code=grpc.StatusCode.UNIMPLEMENTED.value[0], message=f"{method} is not implemented yet")
        )
    error_id = uuid.uuid4().hex[:12]
    log.error("unexpected error in %s (error id %s)", method, error_id, exc_info=exc)
    return rpc_status.to_status(
        status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message=f"internal error (error id {error_id})")
    )


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    status = status_for(exc, method)
    await context.abort(status.code, status.details, status.trailing_metadata)


def _wrap_unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request_or_iterator, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return handler


def _wrap_stream(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request_or_iterator, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return handler


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary, method), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary, method), **kwargs)
    behavior = handler.unary_stream or handler.stream_stream
    # Generated base classes implement streaming RPCs as plain functions that raise; only async
    # generators can be wrapped by iterating them.
    if not inspect.isasyncgenfunction(behavior):
        wrapped = _wrap_unary(behavior, method)
    else:
        wrapped = _wrap_stream(behavior, method)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrapped, **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrapped, **kwargs)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions to statuses for every RPC of the services in ``wrapped_services`` (full names)."""

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
