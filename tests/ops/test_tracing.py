"""Optional OpenTelemetry tracing: a SERVER span per RPC of our services with its method and status, the
caller's trace context continued, health probes left alone; with tracing off nothing of OpenTelemetry loads."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensortrigger.v1 import (
    inference_service_pb2,
    inference_service_pb2_grpc,
    model_pb2,
    registry_service_pb2_grpc,
    tensor_pb2,
)
from tensortrigger.v1 import registry_service_pb2 as rpb

from tests.api.helpers import upload
from tests.api.scrape import free_port, scrape
from tests.ops.helpers import constant_artifacts
from tests.serving import server_settings, unique_name
from tt_server.app import Application

pytest.importorskip("opentelemetry.sdk", reason="the 'otel' extra is not installed")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

REGISTRY = "/tensortrigger.v1.ModelRegistryService"
METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """The process's tracer provider (settable once per process), recording into memory. The server finds it
    installed and uses it, as it would under `opentelemetry-instrument`."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(scope="module")
async def app(spans: InMemorySpanExporter, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Application]:
    application = Application(
        server_settings(
            tmp_path_factory.mktemp("traced"), otel_enabled=True, metrics_address=f"127.0.0.1:{METRICS_PORT}"
        )
    )
    await application.start()
    yield application
    await application.stop(grace=1.0)


@pytest.fixture(scope="module")
async def channel(app: Application) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(app.address) as ch:
        yield ch


def _server_spans(exporter: InMemorySpanExporter, name: str, trace_id: int | None = None) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.name == name and s.kind == trace.SpanKind.SERVER and (trace_id is None or s.context.trace_id == trace_id)
    ]


async def _one_server_span(exporter: InMemorySpanExporter, name: str, trace_id: int | None = None) -> ReadableSpan:
    """The span of a call that has just failed or ended. A server span ends after the status was sent (an abort
    sends it, then unwinds through the interceptor that ends the span), so the client can see the status first:
    wait for it, briefly."""
    for _ in range(100):
        found = _server_spans(exporter, name, trace_id)
        if found:
            await asyncio.sleep(0.05)  # a second span would show up now too
            (span,) = _server_spans(exporter, name, trace_id)
            return span
        await asyncio.sleep(0.02)
    raise AssertionError(f"no server span for {name}")


async def test_spans_carry_method_and_status(
    app: Application, channel: grpc.aio.Channel, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    spans.clear()
    stub = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
    name = unique_name("traced")
    await upload(stub, name, constant_artifacts(tmp_path, 1.0)[0])
    await stub.ListModels(rpb.ListModelsRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetModel(rpb.GetModelRequest(name="no-such-model"))
    download = stub.DownloadModelVersion(rpb.DownloadModelVersionRequest(model=model_pb2.ModelRef(name=name)))
    assert [chunk async for chunk in download]

    listed = await _one_server_span(spans, f"{REGISTRY}/ListModels")
    assert listed.attributes is not None
    assert listed.attributes["rpc.method"] == "ListModels"
    assert listed.attributes["rpc.service"] == "tensortrigger.v1.ModelRegistryService"
    assert listed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    missing = await _one_server_span(spans, f"{REGISTRY}/GetModel")
    assert missing.attributes is not None
    assert missing.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    # NOT_FOUND is the client's mistake, not a server fault: the span status stays unset.
    assert missing.status.status_code == trace.StatusCode.UNSET
    streamed = await _one_server_span(spans, f"{REGISTRY}/DownloadModelVersion")  # server streaming
    assert streamed.attributes is not None
    assert streamed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    uploaded = await _one_server_span(spans, f"{REGISTRY}/UploadModelVersion")  # client streaming
    assert uploaded.attributes is not None
    assert uploaded.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]


async def test_server_faults_mark_the_span_as_error(
    app: Application, channel: grpc.aio.Channel, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(app.registry, "list_models", broken)
    spans.clear()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry_service_pb2_grpc.ModelRegistryServiceStub(channel).ListModels(rpb.ListModelsRequest())
    assert err.value.code() == grpc.StatusCode.INTERNAL
    failed = await _one_server_span(spans, f"{REGISTRY}/ListModels")
    assert failed.attributes is not None
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert failed.status.status_code == trace.StatusCode.ERROR


async def test_the_callers_trace_continues(channel: grpc.aio.Channel, spans: InMemorySpanExporter) -> None:
    spans.clear()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    await registry_service_pb2_grpc.ModelRegistryServiceStub(channel).ListModels(
        rpb.ListModelsRequest(), metadata=(("traceparent", traceparent),)
    )
    span = await _one_server_span(spans, f"{REGISTRY}/ListModels", int(trace_id, 16))
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == "00f067aa0ba902b7"


async def test_latency_exemplars_carry_the_trace_id(channel: grpc.aio.Channel, tmp_path: Path) -> None:
    """With tracing on, the per-model latency histogram's exemplars (OpenMetrics) name the request's trace."""
    name = unique_name("exemplar")
    await upload(
        registry_service_pb2_grpc.ModelRegistryServiceStub(channel), name, constant_artifacts(tmp_path, 1.0)[0]
    )
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    x = np.ones((1, 4), np.float32)
    request = inference_service_pb2.PredictRequest(
        model=model_pb2.ModelRef(name=name),
        inputs={"features": tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[1, 4], content=x.tobytes())},
    )
    await inference_service_pb2_grpc.InferenceServiceStub(channel).Predict(
        request, metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),)
    )
    text = (await scrape(METRICS_PORT, accept="application/openmetrics-text; version=1.0.0")).text
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("tt_model_request_duration_seconds_bucket{") and f'model="{name}"' in line
    ]
    assert any(f'# {{trace_id="{trace_id}"}}' in line for line in lines), lines
    plain = (await scrape(METRICS_PORT)).text  # the classic text format has no exemplars
    assert "trace_id" not in plain


async def test_health_is_not_traced_and_still_works(channel: grpc.aio.Channel, spans: InMemorySpanExporter) -> None:
    """Health's Watch writes to its context instead of being an async generator: the instrumentation's stream
    wrapper could not run it, which is why our filter keeps tracing to our own services."""
    spans.clear()
    health = health_pb2_grpc.HealthStub(channel)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest())
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    assert not [s for s in spans.get_finished_spans() if "Health" in s.name]


def test_tracing_off_imports_nothing_of_opentelemetry(tmp_path: Path) -> None:
    """A server started and stopped with tracing off (the default) never loads OpenTelemetry."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from tt_server.app import Application
        from tt_server.config import Settings

        async def main():
            app = Application(Settings(grpc_address="127.0.0.1:0", data_dir={str(tmp_path)!r}))
            await app.start()
            await app.stop(grace=0.1)

        asyncio.run(main())
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert not loaded, loaded
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_provider_from_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from tt_server.tracing import DEFAULT_SERVICE_NAME, _provider_from_environment

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert _provider_from_environment().resource.attributes["service.name"] == DEFAULT_SERVICE_NAME
    monkeypatch.setenv("OTEL_SERVICE_NAME", "tt-eu-1")
    assert _provider_from_environment().resource.attributes["service.name"] == "tt-eu-1"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="zipkin"):
        _provider_from_environment()
