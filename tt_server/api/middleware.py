"""What every RPC needs, applied by wrapping each method's handler once, when it is registered: request ids,
authentication, rate limits, error mapping, metrics.

Every call gets a request id: the client's ``x-request-id`` metadata (made safe and bounded) or a fresh one. It is
set in ``logs.request_id`` for the call's task, so every log line of the call carries it, and sent back as
``x-request-id`` trailing metadata (streams also get it in their initial metadata, so it is known while they
run). A call that sends ``x-tt-timing: 1`` also gets ``server-timing`` trailing metadata (W3C Server-Timing form,
milliseconds): the time its inference requests spent in the batcher queue, in model calls, decoding and encoding,
and the call's total time in the handler.

Authentication (when a token file is configured) runs before the method does anything, for every service
(health and reflection can be public); a stream is refused before any request message is read. For our own
services the wrapper also applies the per-client rate limit, times the call, counts the outcome by status code and,
when ``TT_ACCESS_LOG`` asks, writes an access log line (method, the model and version the call concerned, the
caller's token name, status, duration, request id); for every service it turns exceptions into statuses
(``api.errors.status_for``).

Requests arrive as bytes (every method is registered with an identity deserializer) and are parsed here, after
authentication: a message that does not parse, on any method of any service (first message or mid-stream), ends
the call with INVALID_ARGUMENT "request is not a valid <type>: ..." and the request id, is counted like any
other status, and is logged at most once per ``MALFORMED_LOG_INTERVAL`` with a count and no traceback. Left to
grpc, the same failure was UNKNOWN or INTERNAL, skipped the middleware and logged a traceback per call.

Why not a ``grpc.aio.ServerInterceptor``: grpc.aio runs a server's interceptor chain as extra coroutines on every
call, before the handler; on a Predict that returns a canned answer that machinery cost ~1/3 of the event loop's
time per call. Wrapping at registration does the lookup work once per method: ``Middleware.on(server)`` is handed
to the generated ``add_*_to_server`` functions in place of the server and wraps whatever they register (see
``_Registrar`` for why it serves them as one generic handler). Interceptors still work on top: the optional
tracing one encloses all of this.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from tt_server import metrics
from tt_server.api.auth import AuthError, RateLimiter, TokenAuthenticator
from tt_server.api.errors import status_for
from tt_server.errors import InvalidArgument, ResourceExhausted
from tt_server.logs import caller as caller_name
from tt_server.logs import request_id, served_model
from tt_server.runtime.observe import ServerTiming, timing_sink

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
TIMING_KEY = "x-tt-timing"  # a request asks for server-timing trailers
SERVER_TIMING_KEY = "server-timing"
MAX_REQUEST_ID_LENGTH = 64
_HEALTH_PREFIX = "/grpc.health.v1.Health/"  # health checks: never refused for load (TT_MAX_CONCURRENT_RPCS)
# A client's id lands in log lines and metadata: anything outside this set (newlines, quotes, non-ASCII) is
# replaced, so it can neither forge log lines nor break a header.
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._:/+=@-]")

# Fresh ids: a random per-process prefix and a counter. Unique across replicas and restarts (64 random bits per
# process) without a system call per request.
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)

Metadata = tuple[tuple[str, str | bytes], ...]
Deserializer = Callable[[bytes], Any]

# Any client can send garbage at any rate: one warning per interval, with how many were refused since the last.
MALFORMED_LOG_INTERVAL = 60.0


class MalformedRequest(InvalidArgument):
    """Raised when a request message does not parse as the method's request type."""


class Overloaded(ResourceExhausted):
    """Raised when ``TT_MAX_CONCURRENT_RPCS`` calls are in progress already."""


class _ConcurrencyLimit:
    """Calls in progress, bounded. Enforced here rather than by grpc's ``maximum_concurrent_rpcs``, which counts
    every call, health checks included: under overload Kubernetes would see failed probes and restart a busy but
    healthy pod. Health checks are neither counted nor refused."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.active = 0

    def acquire(self) -> None:
        if self.active >= self.maximum:
            raise Overloaded(f"the server is at its limit of {self.maximum} calls in progress; retry shortly")
        self.active += 1

    def release(self) -> None:
        self.active -= 1


class _MalformedLog:
    """Logs refused messages at most once per interval: the first of each interval, with the count since."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self._unlogged = 0

    def record(self, method: str, reason: str) -> None:
        now = time.monotonic()
        self._unlogged += 1
        if now < self._next:
            return
        self._next = now + self._interval
        count, self._unlogged = self._unlogged, 0
        log.warning(
            "refused a request that does not parse",
            extra={"method": method, "reason": reason, "refused_since_last_log": count},
        )


_malformed_log = _MalformedLog(MALFORMED_LOG_INTERVAL)


def _decoder(method: str, deserializer: Deserializer | None) -> Deserializer | None:
    """The method's parse step, raising ``MalformedRequest`` instead of whatever the parser raises."""
    if deserializer is None:
        return None
    # The generated code passes the message class's FromString; its class names the type in the message.
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    type_name = descriptor.full_name if descriptor is not None else "request message"

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as e:  # DecodeError, bad UTF-8, nesting too deep: all the client's doing
            reason = str(e).split(": ", 1)[-1][:200] if str(e) else type(e).__name__
            _malformed_log.record(method, reason)
            raise MalformedRequest(f"request is not a valid {type_name}: {reason}") from None

    return decode


async def _decoded(raw_messages: AsyncIterator[bytes], decode: Deserializer) -> AsyncIterator[Any]:
    async for raw in raw_messages:
        yield decode(raw)


access_log = logging.getLogger("tt_server.access")


class AccessLog:
    """``all``: a line per call; ``sampled``: every failed call and ``ratio`` of the successful ones."""

    def __init__(self, mode: str, ratio: float = 0.01) -> None:
        self._all = mode == "all"
        self._ratio = ratio

    def record(self, method: str, code: grpc.StatusCode | None, seconds: float) -> None:
        if not self._all and code is None and random.random() >= self._ratio:
            return
        model = served_model.get()
        access_log.info(
            "call",
            extra={
                "method": method,
                "model": model[0] if model else None,
                "version": model[1] if model else None,
                "caller": caller_name.get(),
                "status": code.name if code is not None else "OK",
                "duration_ms": round(seconds * 1000, 3),
            },
        )


def request_id_for(sent: str | None) -> str:
    """``sent`` (a client's id, from metadata or an HTTP header) made safe and bounded, else a fresh id."""
    if sent is not None:
        safe = _UNSAFE_ID_CHARS.sub("_", sent[:MAX_REQUEST_ID_LENGTH])
        if safe.strip("_"):
            return safe
    return f"{_ID_PREFIX}-{next(_id_counter):x}"


def _metadata_value(metadata: Sequence[tuple[str, str | bytes]] | None, key: str) -> str | None:
    for k, value in metadata or ():
        if k == key and isinstance(value, str):
            return value
    return None


class _Call:
    """Per-method state, resolved once at registration: metric children, who may call, the rate limiter."""

    def __init__(
        self,
        method: str,
        ours: bool,
        auth: TokenAuthenticator | None,
        limiter: RateLimiter | None,
        concurrency: _ConcurrencyLimit | None,
        access: AccessLog | None = None,
    ) -> None:
        self.method = method
        self.concurrency = None if method.startswith(_HEALTH_PREFIX) else concurrency
        self.access = access if ours else None
        self.ours = ours  # our services: error mapping, metrics and rate limits apply
        self.auth = auth if auth is not None and not auth.is_public(method) else None
        self.limiter = limiter if ours else None
        self.checks = self.auth is not None or self.limiter is not None  # else admit() has nothing to do
        # Metric children exist for our methods only (no empty series for health and reflection).
        self._seconds = metrics.RPC_SECONDS.labels(method) if ours else None
        self._ok = metrics.RPCS.labels(method, "OK") if ours else None

    def start(self, context: grpc.aio.ServicerContext) -> tuple[Metadata, ServerTiming | None]:
        """Set the call's request id (for its logs and its trailers) and, when asked for, its timing sink;
        return the id as metadata and the sink."""
        sent = timing = None
        for k, value in context.invocation_metadata() or ():  # one scan for both keys
            if k == REQUEST_ID_KEY and isinstance(value, str) and sent is None:
                sent = value
            elif k == TIMING_KEY and value not in ("", "0", "false"):
                timing = ServerTiming()
                timing_sink.set(timing)
        rid = request_id_for(sent)
        request_id.set(rid)
        ids: Metadata = ((REQUEST_ID_KEY, rid),)
        context.set_trailing_metadata(ids)
        return ids, timing

    async def admit(self, context: grpc.aio.ServicerContext, ids: Metadata) -> None:
        """Authenticate (aborting the call when refused) and apply the rate limit."""
        caller = None
        if self.auth is not None:
            authorization = _metadata_value(context.invocation_metadata(), "authorization")
            try:
                caller = self.auth.authorize(self.method, authorization).name
                caller_name.set(caller)
            except AuthError as e:
                code = grpc.StatusCode.PERMISSION_DENIED if e.permission else grpc.StatusCode.UNAUTHENTICATED
                metrics.RPCS.labels(self.method, code.name).inc()
                if self.access is not None:
                    self.access.record(self.method, code, 0.0)
                await context.abort(code, e.message, ids)
        if self.limiter is not None:
            client = caller or context.peer().rsplit(":", 1)[0]  # "ipv4:1.2.3.4:port" -> without port
            if not self.limiter.allow(client):
                raise ResourceExhausted("rate limit exceeded for this client; slow down and retry")

    def done(self, started: float, code: grpc.StatusCode | None) -> None:
        if self._seconds is None or self._ok is None:  # not one of our services
            return
        seconds = time.perf_counter() - started
        self._seconds.observe(seconds)
        if code is None:
            self._ok.inc()
        else:
            metrics.RPCS.labels(self.method, code.name).inc()
        if self.access is not None:
            self.access.record(self.method, code, seconds)

    async def fail(
        self,
        context: grpc.aio.ServicerContext,
        exc: Exception,
        started: float,
        ids: Metadata,
        timing: ServerTiming | None,
    ) -> None:
        # Every service's failures are mapped (health's and reflection's too: grpc would answer UNKNOWN with the
        # exception's text, e.g. for health's List, which grpcio-health's servicer leaves unimplemented).
        status = status_for(exc, self.method)
        self.done(started, status.code)
        # abort()'s metadata replaces what set_trailing_metadata() set, so the id goes in again.
        await context.abort(status.code, status.details, (*status.trailing_metadata, *_trailers(ids, timing, started)))


def _trailers(ids: Metadata, timing: ServerTiming | None, started: float) -> Metadata:
    if timing is None:
        return ids
    return (*ids, (SERVER_TIMING_KEY, timing.header(time.perf_counter() - started)))


def _wrap_unary(
    behavior: Callable[..., Any], call: _Call, decode: Deserializer | None, streaming: bool
) -> Callable[..., Any]:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        ids, timing = call.start(context)
        admitted = False
        try:
            if call.concurrency is not None:
                call.concurrency.acquire()
                admitted = True
            if call.checks:
                await call.admit(context, ids)
            if streaming:
                # Tells a client stream (an upload) that it was admitted before it sends any data: a client that
                # writes into a call the server has already refused gets grpc's "Internal error from Core"
                # instead of the real status, so the Python client waits for this first.
                await context.send_initial_metadata(ids)
            if decode is not None:
                request_or_iterator = (
                    _decoded(request_or_iterator, decode) if streaming else decode(request_or_iterator)
                )
            response = await behavior(request_or_iterator, context)
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            call.done(started, grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            await call.fail(context, exc, started, ids, timing)
        finally:
            if admitted:
                call.concurrency.release()  # type: ignore[union-attr]
        if timing is not None:
            context.set_trailing_metadata(_trailers(ids, timing, started))
        call.done(started, None)
        return response

    return handler


def _wrap_stream(
    behavior: Callable[..., Any], call: _Call, decode: Deserializer | None, streaming: bool
) -> Callable[..., Any]:
    async def handler(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.perf_counter()
        ids, timing = call.start(context)
        admitted = False
        try:
            if call.concurrency is not None:
                call.concurrency.acquire()
                admitted = True
            if call.checks:
                await call.admit(context, ids)
            if decode is not None:
                request_or_iterator = (
                    _decoded(request_or_iterator, decode) if streaming else decode(request_or_iterator)
                )
            await context.send_initial_metadata(ids)
            async for response in behavior(request_or_iterator, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            call.done(started, grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            await call.fail(context, exc, started, ids, timing)
        finally:
            if admitted:
                call.concurrency.release()  # type: ignore[union-attr]
        if timing is not None:
            context.set_trailing_metadata(_trailers(ids, timing, started))
        call.done(started, None)

    return handler


class Middleware:
    """Wraps the handlers registered through ``on(server)``; ``wrapped_services`` (full names) are ours."""

    def __init__(
        self,
        wrapped_services: set[str],
        auth: TokenAuthenticator | None = None,
        limiter: RateLimiter | None = None,
        max_concurrent_rpcs: int | None = None,
        access: AccessLog | None = None,
    ) -> None:
        self._services = wrapped_services
        self._auth = auth
        self._limiter = limiter
        self._access = access
        self._concurrency = _ConcurrencyLimit(max_concurrent_rpcs) if max_concurrent_rpcs else None
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def on(self, server: grpc.aio.Server) -> _Registrar:
        """A stand-in for ``server`` in ``add_*Servicer_to_server(servicer, ...)``: registers wrapped handlers."""
        return _Registrar(server, self)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` of ``method`` ("/package.Service/Method") with everything above around it (cached)."""
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = self._build(handler, method)
        return wrapped

    def _build(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        call = _Call(
            method, method.split("/")[1] in self._services, self._auth, self._limiter, self._concurrency, self._access
        )
        decode = _decoder(method, handler.request_deserializer)
        # grpc hands the handler the raw bytes (no deserializer); the wrapper parses them after authentication.
        kwargs = {"request_deserializer": None, "response_serializer": handler.response_serializer}
        streaming = handler.request_streaming
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary, call, decode, False), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary, call, decode, True), **kwargs)
        behavior = handler.unary_stream or handler.stream_stream
        # Handlers that stream by writing to their context (health's Watch), and the generated base classes'
        # not-implemented stubs, are plain coroutines: only async generators can be wrapped by iterating them.
        wrap = _wrap_stream if inspect.isasyncgenfunction(behavior) else _wrap_unary
        wrapped = wrap(behavior, call, decode, streaming)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(wrapped, **kwargs)
        return grpc.stream_stream_rpc_method_handler(wrapped, **kwargs)


# grpc ships no types, so mypy sees this base class as Any
class _Registrar(grpc.GenericRpcHandler):  # type: ignore[misc]
    """What the generated ``add_*_to_server`` functions call on a server: collects their handlers, wrapped, and
    serves them all as one generic handler (one dictionary lookup per call).

    The generated functions register each service twice, as a generic handler and as "registered methods".
    Registered methods are not passed on to grpc.aio: for them its server keeps one pending request future per
    method and waits on all of them (``asyncio.wait``) for every call it accepts. With the ~50 methods of our
    services that cost more than the whole echo server's work per call (measured on the Predict benchmark).
    """

    def __init__(self, server: grpc.aio.Server, middleware: Middleware) -> None:
        self._middleware = middleware
        self._table: dict[str, grpc.RpcMethodHandler] = {}  # full method name -> wrapped handler
        self._generic: list[grpc.GenericRpcHandler] = []  # asked after the table, in order
        server.add_generic_rpc_handlers((self,))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            method = f"/{service}/{name}"
            self._table[method] = self._middleware.wrap(handler, method)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self._table.get(method)
        if handler is not None:
            return handler
        for generic in self._generic:
            found = generic.service(handler_call_details)
            if found is not None:
                return self._middleware.wrap(found, method)
        return None
