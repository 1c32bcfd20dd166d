"""What one inference request did and how long each part took, for the per-model metrics and the client's
``server-timing`` trailer.

Every protocol's servicer wraps a request in a ``RequestObservation`` (a plain ``with``: a few attribute writes
and one ``perf_counter`` per request); ``InferenceService.predict`` binds it to the version's ``ServingSeries``
and records decoding, the batcher records queue and model-call time, and the servicer's encoding ends it. On exit
it counts the request by status (the gRPC code name of the exception, derived here without importing grpc: the
domain errors are named after their codes) and, when the call asked for timing (``timing_sink`` set by the
middleware), adds its times to the call's ``ServerTiming``.
"""

from __future__ import annotations

import contextvars
import re
import time
from types import TracebackType

from tt_server import errors, metrics

# Set by the middleware for calls that ask for timing; asyncio copies it into a stream's tasks, which all add to
# the one object.
timing_sink: contextvars.ContextVar[ServerTiming | None] = contextvars.ContextVar("tt_server_timing", default=None)


class ServerTiming:
    """Server time of one call in seconds, summed over its inference requests (a stream's chunks)."""

    __slots__ = ("compute", "decode", "encode", "queue")

    def __init__(self) -> None:
        self.decode = self.queue = self.compute = self.encode = 0.0

    def header(self, total: float) -> str:
        """The W3C Server-Timing form, in milliseconds: ``queue;dur=0.051, compute;dur=0.3, ..., total;dur=1.2``."""
        parts = (
            ("queue", self.queue),
            ("compute", self.compute),
            ("decode", self.decode),
            ("encode", self.encode),
            ("total", total),
        )
        return ", ".join(f"{name};dur={seconds * 1e3:.3f}" for name, seconds in parts)


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_codes: dict[type[BaseException], str] = {}


def status_code(exc: BaseException) -> str:
    """The gRPC status code name a client gets for ``exc`` (``api.errors`` maps the same classes)."""
    cls = type(exc)
    code = _codes.get(cls)
    if code is None:
        code = "INTERNAL"
        if isinstance(exc, errors.TensorTriggerError):
            domain = next(c for c in cls.__mro__ if errors.TensorTriggerError in c.__bases__)
            code = _CAMEL.sub("_", domain.__name__).upper()  # NotFound -> NOT_FOUND
        elif isinstance(exc, NotImplementedError):
            code = "UNIMPLEMENTED"
        elif cls.__name__ == "CancelledError":
            code = "CANCELLED"
        elif cls.__name__ == "AbortError":  # grpc.aio's abort(): the status was sent by the servicer itself
            code = "ABORTED"
        _codes[cls] = code
    return code


class RequestObservation:
    """One inference request (``with RequestObservation(model_name) as obs:`` around the whole handling)."""

    __slots__ = ("compute", "decode", "encoding_from", "model", "queue", "rows", "series", "started")

    def __init__(self, model: str) -> None:
        self.model = model  # the name the client sent, until a version is bound
        self.series: metrics.ServingSeries | None = None  # bound by InferenceService.predict
        self.started = time.perf_counter()
        self.decode = 0.0
        self.queue = 0.0
        self.compute = 0.0
        self.encoding_from = 0.0  # when the outputs were ready (perf_counter); encoding is what follows
        self.rows = 0

    def __enter__(self) -> RequestObservation:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        now = time.perf_counter()
        series = self.series
        encode = now - self.encoding_from if self.encoding_from else 0.0
        if exc is None and series is not None:
            series.count("OK")
            series.rows += self.rows
            series.decode += self.decode
            series.encode += encode
            series.queue.observe(self.queue)
        else:
            code = status_code(exc) if exc is not None else "INTERNAL"
            if series is None:
                series = metrics.unloaded_series(self.model, code)
            series.count(code)
        if metrics.exemplars:
            series.latency.observe_with(now - self.started, _trace_exemplar())
        else:
            series.latency.observe(now - self.started)
        sink = timing_sink.get()
        if sink is not None:
            sink.decode += self.decode
            sink.queue += self.queue
            sink.compute += self.compute
            sink.encode += encode


def _trace_exemplar() -> dict[str, str] | None:
    """The current span's trace id as an exemplar (OpenTelemetry is loaded when tracing is on)."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return {"trace_id": format(context.trace_id, "032x")} if context.is_valid else None
