"""Defects found from outside, each reproduced against a real server: token file edits, cancelled uploads,
health probes under overload, reflection as current tools use it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FileDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from tensortrigger.v1 import registry_service_pb2 as pb
from tensortrigger.v1 import registry_service_pb2_grpc

from tests.api.helpers import grpcurl
from tests.models import mlp_keras
from tests.serving import server_settings
from tt_server import compat
from tt_server.api.auth import TokenAuthenticator
from tt_server.app import SERVICE_NAMES, Application


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_malformed_token_file_keeps_the_old_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(TokenAuthenticator, "RELOAD_SECONDS", 0.0)  # check the file on every call
    tokens = tmp_path / "tokens"
    tokens.write_text("admin a-secret-789 ops\n")
    application = Application(server_settings(tmp_path, auth_tokens_file=tokens))
    await application.start()
    try:
        async with grpc.aio.insecure_channel(application.address) as ch:
            stub = registry_service_pb2_grpc.ModelRegistryServiceStub(ch)
            await stub.ListModels(pb.ListModelsRequest(), metadata=_bearer("a-secret-789"))
            # An operator adds a line with a typo in the role, at run time.
            tokens.write_text("admin a-secret-789 ops\nsuperuser bogus-token\n")
            os.utime(tokens, ns=(tokens.stat().st_mtime_ns + 10**9,) * 2)
            caplog.set_level(logging.WARNING, logger="tt_server.api.auth")
            for _ in range(5):
                await stub.ListModels(pb.ListModelsRequest(), metadata=_bearer("a-secret-789"))
                with pytest.raises(grpc.aio.AioRpcError) as err:  # the bad line added nobody
                    await stub.ListModels(pb.ListModelsRequest(), metadata=_bearer("bogus-token"))
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            warnings = [r for r in caplog.records if "not reloaded" in r.getMessage()]
            assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
            # Fixed: the new tokens apply.
            tokens.write_text("admin a-secret-789 ops\nreader r-new reader\n")
            os.utime(tokens, ns=(tokens.stat().st_mtime_ns + 2 * 10**9,) * 2)
            await stub.ListModels(pb.ListModelsRequest(), metadata=_bearer("r-new"))
    finally:
        await application.stop(grace=1.0)
    # At start-up a bad file is still a configuration error.
    tokens.write_text("superuser bogus-token\n")
    with pytest.raises(ValueError, match="expected"):
        TokenAuthenticator(tokens, True, False)


async def test_cancelled_uploads_leave_no_scratch(tmp_path: Path) -> None:
    # A folder a killed process left (untouched for two hours) and one a sibling process is writing to now.
    stale, fresh = tmp_path / "tmp" / "upload-stale", tmp_path / "tmp" / "upload-fresh"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "artifact").write_bytes(b"x")
    for path in (stale, stale / "artifact"):
        os.utime(path, (time.time() - 7200,) * 2)
    application = Application(server_settings(tmp_path))
    await application.start()
    scratch = application.settings.scratch_dir
    assert not stale.exists() and fresh.exists()  # swept at start-up, the young one spared
    fresh.rename(tmp_path / "elsewhere")
    model = mlp_keras(tmp_path).read_bytes()
    try:
        async with grpc.aio.insecure_channel(application.address) as ch:
            stub = registry_service_pb2_grpc.ModelRegistryServiceStub(ch)
            for i in range(20):
                # Even: the client stops sending after the header (spooling); odd: it sends a whole model and
                # cancels a moment later (inspection in its thread, or publishing).
                call = stub.UploadModelVersion(_upload_then_stall(f"cancelled-{i}", model, stall=i % 2 == 0))
                await _until(lambda: any(scratch.glob("upload-*")))
                await asyncio.sleep(0.005 * (i % 7))
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await call
            await _until(lambda: not any(scratch.glob("upload-*")))
            assert not list(scratch.glob("upload-*"))
            # A version is either whole or absent: each listed model has one version that serves its artifact.
            for model_entry in (await stub.ListModels(pb.ListModelsRequest())).models:
                versions = await stub.ListModelVersions(pb.ListModelVersionsRequest(name=model_entry.name))
                assert len(versions.versions) == 1
    finally:
        await application.stop(grace=1.0)


async def _upload_then_stall(name: str, model: bytes, stall: bool) -> AsyncIterator[pb.UploadModelVersionRequest]:
    yield pb.UploadModelVersionRequest(header=pb.UploadHeader(model_name=name))
    if stall:
        yield pb.UploadModelVersionRequest(chunk=model[:1024])
        await asyncio.Event().wait()  # never sends more
    yield pb.UploadModelVersionRequest(chunk=model)


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110 - polling the file system
        await asyncio.sleep(0.005)


async def test_health_probes_are_not_shed_under_overload(tmp_path: Path) -> None:
    application = Application(server_settings(tmp_path, max_concurrent_rpcs=2))
    await application.start()
    try:
        async with grpc.aio.insecure_channel(application.address) as ch:
            stub = registry_service_pb2_grpc.ModelRegistryServiceStub(ch)
            holders = [stub.UploadModelVersion(_upload_then_stall(f"slow-{i}", b"x", stall=True)) for i in range(2)]
            scratch = application.settings.scratch_dir
            await _until(lambda: len(list(scratch.glob("upload-*"))) == 2)  # both calls are in progress
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListModels(pb.ListModelsRequest())
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            health = health_pb2_grpc.HealthStub(ch)
            answers = await asyncio.gather(*(health.Check(health_pb2.HealthCheckRequest()) for _ in range(30)))
            assert {a.status for a in answers} == {health_pb2.HealthCheckResponse.SERVING}
            for holder in holders:
                holder.cancel()
            await _until(lambda: not any(scratch.glob("upload-*")))
            await stub.ListModels(pb.ListModelsRequest())  # the slots were given back
    finally:
        await application.stop(grace=1.0)


def _symbols(file: FileDescriptor) -> Iterator[str]:
    """Every symbol a reflection client may ask about in ``file``: services, methods, messages (nested too),
    enums, fields."""

    def message_symbols(message: Descriptor) -> Iterator[str]:
        yield message.full_name
        yield from (f.full_name for f in message.fields)
        yield from (e.full_name for e in message.enum_types)
        for nested in message.nested_types:
            yield from message_symbols(nested)

    for service in file.services_by_name.values():
        yield service.full_name
        yield from (m.full_name for m in service.methods)
    for message in file.message_types_by_name.values():
        yield from message_symbols(message)
    yield from (e.full_name for e in file.enum_types_by_name.values())


async def test_reflection_v1_and_v1alpha_resolve_every_symbol(tmp_path: Path) -> None:
    application = Application(server_settings(tmp_path))
    await application.start()
    try:
        files = {
            descriptor_pool.Default().FindServiceByName(name).file for name in (*SERVICE_NAMES, *compat.SERVICE_NAMES)
        }
        symbols = sorted({s for f in files for s in _symbols(f)})
        assert "tensortrigger.v1.InferenceService.Train" in symbols and len(symbols) > 300
        async with grpc.aio.insecure_channel(application.address) as ch:
            for version in ("v1", "v1alpha"):  # current tools ask for v1 first, older ones for v1alpha
                info = ch.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo")
                requests = [reflection_pb2.ServerReflectionRequest(list_services="")]
                requests += [reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in symbols]
                # v1 and v1alpha messages are the same on the wire: one set of classes speaks both.
                answers = [
                    reflection_pb2.ServerReflectionResponse.FromString(raw)
                    async for raw in info(iter(r.SerializeToString() for r in requests))
                ]
                listed = {s.name for s in answers[0].list_services_response.service}
                assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= listed
                assert {*SERVICE_NAMES, *compat.SERVICE_NAMES, "grpc.health.v1.Health"} <= listed
                unresolved = [s for s, a in zip(symbols, answers[1:], strict=True) if a.HasField("error_response")]
                assert not unresolved, (version, unresolved[:10])
        # The real grpcurl (its wrapper ships 1.8.6, which speaks v1alpha): a method symbol, a field, a map entry.
        for symbol, kind in (
            ("tensortrigger.v1.InferenceService.Train", "is a method"),
            ("tensortrigger.v1.PredictRequest.model", "is a field"),
            ("grpc.reflection.v1.ServerReflection", "is a service"),
        ):
            out = await grpcurl("-plaintext", application.address, "describe", symbol)
            assert f"{symbol} {kind}" in out, out
    finally:
        await application.stop(grace=1.0)
