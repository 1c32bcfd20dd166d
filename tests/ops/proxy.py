"""A loopback TCP proxy in front of one service, which a test can cut, black-hole and restore.

Outage tests point the server under test at the proxy instead of the service, so a fault touches only that
server's connections: other test sessions sharing PostgreSQL, RabbitMQ or S3 see nothing.

* ``cut()``: the service is down. The listening socket closes (new connections are refused at once) and every
  open connection is reset in both directions.
* ``blackhole()``: the network is partitioned. Open connections are reset; new ones are accepted but nothing
  ever answers, so only the client's own timeouts end them.
* ``restore()``: the service is back on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._forwarding = True
        self.port = 0

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        if self.port == 0:
            # Bound once with port 0 to learn a free port, which restore() then reuses.
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        return self

    async def cut(self) -> None:
        await self._stop_listening()
        self._reset_all()

    async def blackhole(self) -> None:
        self._reset_all()
        self._forwarding = False
        if self._server is None:
            await self.start()

    async def restore(self) -> None:
        self._reset_all()  # black-holed connections would otherwise hang on
        self._forwarding = True
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self._stop_listening()
        self._reset_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            # Python 3.11's wait_closed() returns at once; 3.12+ waits for open connections, reset right after.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 0.1)

    def _reset_all(self) -> None:
        for transport in list(self._transports):
            transport.abort()  # RST, not FIN: what a crashed server or a dropped route looks like
        self._transports.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._transports.add(client_writer.transport)
        try:
            if not self._forwarding:
                while await client_reader.read(65536):  # swallow what is sent, answer nothing, until reset
                    pass
                return
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
            except OSError:
                client_writer.transport.abort()
                return
            self._transports.add(upstream_writer.transport)
            try:
                await asyncio.gather(
                    _pipe(client_reader, upstream_writer),
                    _pipe(upstream_reader, client_writer),
                    return_exceptions=True,
                )
            finally:
                self._transports.discard(upstream_writer.transport)
        finally:
            self._transports.discard(client_writer.transport)
            client_writer.transport.abort()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()
