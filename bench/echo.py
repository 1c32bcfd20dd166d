"""The framework ceiling: a bare ``grpc.aio`` server answering Predict with fixed, pre-serialized bytes.

No deserialization, no validation, no model: whatever the real server does on top of this costs throughput.
It uses the same message size options as ``tt-server`` and, by argument, the same event loop.

    python -m bench.echo PORT RESPONSE_FILE [uvloop|asyncio]    # prints "ready" once listening; stops on SIGTERM
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc

from bench.workload import SERVICE

MAX_MESSAGE = 64 << 20


async def serve(port: int, response: bytes) -> None:
    async def predict(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return response

    # No (de)serializers: the request stays raw bytes and the response is sent as is.
    handler = grpc.method_handlers_generic_handler(SERVICE, {"Predict": grpc.unary_unary_rpc_method_handler(predict)})
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    )
    server.add_generic_rpc_handlers((handler,))
    await serve_until_signalled(server, port)


async def serve_until_signalled(server: grpc.aio.Server, port: int) -> None:
    """Listen on 127.0.0.1:``port``, print ``ready`` (what the benchmark waits for), serve until SIGTERM/SIGINT."""
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"cannot listen on port {port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    port, response_file = int(sys.argv[1]), Path(sys.argv[2])
    loop = sys.argv[3] if len(sys.argv) > 3 else "asyncio"
    if loop == "uvloop":
        import uvloop

        uvloop.run(serve(port, response_file.read_bytes()))
    else:
        asyncio.run(serve(port, response_file.read_bytes()))


if __name__ == "__main__":
    main()
