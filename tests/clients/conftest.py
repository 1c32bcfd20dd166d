"""``client``: a sync ``Client`` and an ``AsyncClient`` (two params) on the module's real server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import tensortrigger as tt

from tests.clients.helpers import AnyClient
from tt_server.app import Application


@pytest.fixture(scope="module", params=["sync", "async"])
async def client(request: pytest.FixtureRequest, app: Application) -> AsyncIterator[AnyClient]:
    if request.param == "sync":
        with tt.Client(app.address) as sync_client:
            yield sync_client
    else:
        async with tt.AsyncClient(app.address) as async_client:
            yield async_client
