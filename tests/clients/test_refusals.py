"""A client stream the server refuses at once (no token, too low a role) reports the server's status, never
grpc.aio's "Internal error from Core" (what a write into an already refused call gives)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensortrigger as tt

from tests import models
from tests.serving import server_settings
from tt_server.app import Application


async def test_refused_uploads_report_the_real_status(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("reader read-token ci-reader\nwriter write-token ci-writer\n")
    application = Application(server_settings(tmp_path / "server", auth_tokens_file=tmp_path / "tokens"))
    await application.start()
    # Several MiB: many chunks are on their way when the refusal comes back.
    mlp = models.mlp_keras(tmp_path)
    artifact = tmp_path / "big.keras"
    artifact.write_bytes(mlp.read_bytes() + bytes(4 << 20))
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b,c,d\n" + "1,2,3,4\n" * 200_000)
    try:
        async with tt.AsyncClient(application.address, retry=None) as anonymous:
            for _ in range(30):
                with pytest.raises(tt.UnauthenticatedError):
                    await anonymous.upload("refused", artifact)
            for _ in range(10):
                with pytest.raises(tt.UnauthenticatedError):
                    await anonymous.submit_job("refused", rows)
        async with tt.AsyncClient(application.address, token="read-token", retry=None) as reader:
            for _ in range(10):
                with pytest.raises(tt.PermissionDeniedError):
                    await reader.upload("refused", artifact)
        async with tt.AsyncClient(application.address, token="write-token") as writer:  # admitted: still works
            await writer.upload("accepted", mlp)
            assert (await writer.predict("accepted", np.zeros((1, 4))))["score"].shape == (1, 1)
    finally:
        await application.stop(grace=1.0)
