"""Optional OpenTelemetry tracing: one SERVER span per RPC of our services, off unless ``TT_OTEL_ENABLED``.

The spans come from ``opentelemetry-instrumentation-grpc``'s grpc.aio server interceptor, which runs around the
handlers that ``api.middleware`` wrapped, so its span encloses all of the middleware's work: our error mapping
aborts through the context it wraps, so each span gets the status code the client saw (``rpc.grpc.status_code``;
span status ERROR for the server-fault codes, as the semantic conventions say), the method as its name, and the
caller's trace context from ``traceparent`` metadata. It is given a filter that keeps it to our services:
health's ``Watch`` streams by writing to its context instead of being an async generator, which the
instrumentation's stream wrapper cannot iterate (and probes every few seconds would only be noise in the traces).

The exporter is configured by the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp`` over gRPC, the default;
``console``; ``none``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``..._TRACES_ENDPOINT``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` / ``..._ARG``, ``OTEL_BSP_*``. When a tracer provider is
already installed (e.g. the process runs under ``opentelemetry-instrument``), that one is used as it is.

Nothing here imports OpenTelemetry at module level: with tracing off, none of it is loaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "tensortrigger"


class Tracing:
    """The server interceptor that makes the spans, and ``shutdown()`` to flush them when the server stops."""

    def __init__(self, interceptor: grpc.aio.ServerInterceptor, flush: Callable[[], None] | None) -> None:
        self.interceptor = interceptor
        self._flush = flush

    async def shutdown(self) -> None:
        """Export the spans still buffered (bounded by the exporter's timeout, OTEL_EXPORTER_OTLP_TIMEOUT)."""
        if self._flush is not None:
            await asyncio.to_thread(self._flush)


def start_tracing(service_names: set[str]) -> Tracing:
    """Tracing for the RPCs of ``service_names`` (full names, e.g. ``tensortrigger.v1.InferenceService``)."""
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
    except ImportError as e:
        raise RuntimeError(
            "TT_OTEL_ENABLED is set but OpenTelemetry is not installed: pip install 'tensortrigger-server[otel]'"
        ) from e

    provider = trace.get_tracer_provider()
    flush = None
    if isinstance(provider, trace.ProxyTracerProvider):  # nobody installed one: make ours from OTEL_* variables
        sdk_provider = _provider_from_environment()
        trace.set_tracer_provider(sdk_provider)
        provider, flush = sdk_provider, sdk_provider.shutdown
    log.info("tracing enabled", extra={"tracer_provider": type(provider).__name__})

    def ours(details: Any) -> bool:
        return str(details.method).split("/")[1] in service_names

    return Tracing(aio_server_interceptor(tracer_provider=provider, filter_=ours), flush)


def _provider_from_environment() -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        name = name.strip().lower()
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, TLS and timeout from OTEL_EXPORTER_OTLP_*
        elif name == "console":
            exporter = ConsoleSpanExporter()
        elif name in ("none", ""):
            continue
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r} is not supported here (use otlp, console or none)")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
