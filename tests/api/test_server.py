"""Server plumbing: health, reflection (through the real grpcurl binary), unimplemented RPCs, error shape."""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensortrigger.v1 import registry_service_pb2, registry_service_pb2_grpc

from tests.api.helpers import grpcurl, violations
from tests.serving import server_settings
from tt_server.app import SERVICE_NAMES, Application


async def test_health_serving_for_every_service(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", *SERVICE_NAMES):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_and_describes_services(app: Application) -> None:
    listed = (await grpcurl("-plaintext", app.address, "list")).split()
    for name in (*SERVICE_NAMES, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"):
        assert name in listed
    described = await grpcurl("-plaintext", app.address, "describe", "tensortrigger.v1.Tensor")
    assert "Raw element bytes" in described  # proto comments travel with reflection


async def test_grpcurl_call_without_proto_files(app: Application) -> None:
    out = await grpcurl(
        "-plaintext",
        "-d",
        '{"page_size": 5}',
        app.address,
        "tensortrigger.v1.ModelRegistryService/ListModels",
    )
    assert isinstance(json.loads(out), dict)


async def test_bad_request_carries_field_violations(channel: grpc.aio.Channel) -> None:
    get_model = channel.unary_unary(
        "/tensortrigger.v1.ModelRegistryService/GetModel",
        request_serializer=registry_service_pb2.GetModelRequest.SerializeToString,
        response_deserializer=registry_service_pb2.GetModelResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await get_model(registry_service_pb2.GetModelRequest(name="../etc/passwd"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in violations(err.value)
    assert "Traceback" not in (err.value.details() or "")


async def test_stop_turns_health_not_serving_and_drains(tmp_path) -> None:
    application = Application(server_settings(tmp_path))
    await application.start()
    async with grpc.aio.insecure_channel(application.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stop_task = asyncio.ensure_future(application.stop(grace=2.0))
        second = await watch.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stop_task


async def test_max_concurrent_rpcs_is_enforced(tmp_path) -> None:
    application = Application(server_settings(tmp_path, max_concurrent_rpcs=1))
    await application.start()
    try:
        async with grpc.aio.insecure_channel(application.address) as ch:
            stub = registry_service_pb2_grpc.ModelRegistryServiceStub(ch)
            held = asyncio.Event()

            async def slow_upload():
                yield registry_service_pb2.UploadModelVersionRequest(
                    header=registry_service_pb2.UploadHeader(model_name="slow")
                )
                held.set()
                await asyncio.sleep(3600)

            first = stub.UploadModelVersion(slow_upload())
            await held.wait()
            await asyncio.sleep(0.2)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListModels(registry_service_pb2.ListModelsRequest())
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            first.cancel()
    finally:
        await application.stop(grace=1.0)


async def test_sigterm_drains_in_flight_calls_then_exits(tmp_path) -> None:
    """A real `tt-server` process: SIGTERM -> NOT_SERVING at once, an in-flight upload still completes,
    new calls are still accepted during the drain delay, and the process exits 0 within the grace period."""
    import os
    import signal
    import socket
    import time

    from tests import models

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "TT_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "TT_DATA_DIR": str(tmp_path / "data"),
        "TT_DRAIN_DELAY_SECONDS": "1.5",
        "TT_SHUTDOWN_GRACE_SECONDS": "10",
        "TT_LOG_JSON": "false",
    }
    artifact = models.mlp_keras(tmp_path)
    log = (tmp_path / "server.log").open("wb")  # a pipe nobody reads could fill up and stall the server
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tt_server", env=env, stderr=log)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            await health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=60)
            stub = registry_service_pb2_grpc.ModelRegistryServiceStub(ch)
            data = artifact.read_bytes()
            signalled = asyncio.Event()

            async def upload_across_the_signal():
                yield registry_service_pb2.UploadModelVersionRequest(
                    header=registry_service_pb2.UploadHeader(model_name="drained")
                )
                yield registry_service_pb2.UploadModelVersionRequest(chunk=data[:100])
                await signalled.wait()
                yield registry_service_pb2.UploadModelVersionRequest(chunk=data[100:])

            call = stub.UploadModelVersion(upload_across_the_signal())
            await asyncio.sleep(0.3)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            for _ in range(50):
                status = (await health.Check(health_pb2.HealthCheckRequest())).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.02)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            # Still taking new calls during the drain delay (the mesh may not have noticed yet).
            await stub.ListModels(registry_service_pb2.ListModelsRequest())
            signalled.set()
            response = await call
            assert response.version.version == 1
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert time.monotonic() - started < 12
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
