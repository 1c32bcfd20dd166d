"""A real server with its HTTP front on a free loopback port, and the compatibility tests' models on it.

One backend (embedded) is enough here: the HTTP front calls the same domain services as gRPC, whose storage
backends the api/ and compat/ tests cover on both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.compat.conftest import compat_model_files, served  # noqa: F401 - fixtures shared with tests/compat
from tests.serving import server_settings
from tt_server.app import Application


@pytest.fixture(scope="module")
async def app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Application]:
    application = Application(server_settings(tmp_path_factory.mktemp("rest"), http_address="127.0.0.1:0"))
    await application.start()
    yield application
    await application.stop(grace=1.0)


@pytest.fixture(scope="module")
async def http(app: Application) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(app.http_url) as session:
        yield session
