"""The HTTP server: one aiohttp application on the gRPC server's event loop, over the same domain services.

``HttpServer.start()`` returns once it listens; ``stop()`` closes the listening socket, lets requests in flight
finish within the grace period, then closes idle keep-alive connections. The composition root calls ``stop()``
after the drain delay, like the gRPC server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path

import grpc
from aiohttp import web

from tt_server.api.middleware import REQUEST_ID_KEY, request_id_for
from tt_server.rest.core import Front, Route, error_response
from tt_server.rest.openapi import docs_routes

log = logging.getLogger(__name__)


class HttpServer:
    def __init__(
        self,
        routes: list[Route],
        front: Front,
        max_body_bytes: int,
        shutdown_grace: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # client_max_size caps bodies read whole (JSON requests); streamed bodies (uploads, job inputs) are read
        # in chunks and capped by the domain (TT_MAX_UPLOAD_BYTES, TT_JOB_MAX_INPUT_BYTES).
        self.app = web.Application(client_max_size=max_body_bytes, handler_args={"max_field_size": 16384})
        all_routes = [*routes, *docs_routes(routes)]
        for route in all_routes:
            self.app.router.add_route(route.method, route.path, front.wrap(route))
        self.routes = all_routes
        self.app.router.add_route("*", "/{tail:.*}", _not_found)
        self._shutdown_grace = shutdown_grace
        self._front = front
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, address: str, reuse_port: bool = False) -> int:
        """Listen on ``address``; ``reuse_port`` only for supervised workers sharing one port (TT_WORKERS)."""
        host, port = address.rsplit(":", 1)
        # No aiohttp access log: it would format a line per request on the hot path (the lead's access log is
        # where such lines belong).
        # handler_cancellation: a client that disconnects cancels its request's handler, as a cancelled gRPC call
        # does (aiohttp's default lets an abandoned Predict or upload run on).
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=self._shutdown_grace, handler_cancellation=True
        )
        await runner.setup()
        site = web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=self._ssl, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise RuntimeError(f"cannot listen on {address} (TT_HTTP_ADDRESS): {e.strerror or e}") from e
        self._runner = runner
        self.port = runner.addresses[0][1]  # the bound port, for port 0
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking connections, give requests in flight ``grace`` seconds, then close every connection.

        aiohttp's own shutdown ignores the rest of a request body still arriving once it starts (a streamed
        upload would hang until the timeout and fail), so requests in flight are waited for first.
        """
        if self._runner is None:
            return
        grace = self._shutdown_grace if grace is None else grace
        for site in list(self._runner.sites):
            await site.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._front.idle.wait(), grace)
        self._runner._shutdown_timeout = max(deadline - loop.time(), 0.0)  # what is left of the grace period
        await self._runner.cleanup()
        self._runner = None


def server_ssl_context(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> ssl.SSLContext:
    """The gRPC port's TLS for the HTTP port: the same certificate, and with a client CA, client certificates
    required (mTLS). Plain HTTP next to a TLS gRPC port would be a way around it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        context.load_verify_locations(client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _not_found(request: web.Request) -> web.Response:
    """404 for a path no route serves; 405 with ``Allow`` for a path whose routes take other methods (HEAD and
    OPTIONS included: no route answers them), the HTTP spelling of gRPC's UNIMPLEMENTED for an unknown method."""
    rid = request_id_for(request.headers.get(REQUEST_ID_KEY))
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        _, methods = await resource.resolve(request)
        allowed |= methods - {"*"}  # the catch-all route (this one) takes any method
    if allowed:
        methods_text = ", ".join(sorted(allowed))
        response = error_response(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{request.method} is not allowed on {request.path}; it takes {methods_text}",
            rid,
            http_status=405,
        )
        response.headers["Allow"] = methods_text
        return response
    return error_response(grpc.StatusCode.NOT_FOUND, f"no route for {request.method} {request.path}", rid)
