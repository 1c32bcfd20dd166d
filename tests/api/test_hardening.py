"""Defects found from outside, each reproduced against a real server: token file edits, cancelled uploads,
health probes under overload, reflection as current tools use it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import grpc
import pytest
from tensortrigger.v1 import registry_service_pb2 as pb
from tensortrigger.v1 import registry_service_pb2_grpc

from tests.serving import server_settings
from tt_server.api.auth import TokenAuthenticator
from tt_server.app import Application


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
