"""Helpers for the client tests: call either client the same way, run ``tt`` as a subprocess, Keras references."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import pytest
import tensortrigger as tt

AnyClient = tt.Client | tt.AsyncClient

# The `tt` command, as its console script runs it. The real script is exercised by test_fresh_install.
TT = [sys.executable, "-m", "tensortrigger._cli"]

# For tests that run `tt` subprocesses: the CLI only sees the API, so one backend is enough and each subprocess
# costs a Python start-up.
embedded_only = pytest.mark.parametrize("app", ["embedded"], indirect=True, scope="module")


async def call(client: AnyClient, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``method`` on either client: awaited directly, or in a thread for the blocking one (the server
    runs on this test's event loop, which a blocking call would stall)."""
    if isinstance(client, tt.AsyncClient):
        return await getattr(client, method)(*args, **kwargs)
    return await asyncio.to_thread(getattr(client, method), *args, **kwargs)


async def collect(client: AnyClient, method: str, *args: Any, **kwargs: Any) -> list[Any]:
    """Everything an iterating method yields, from either client."""
    if isinstance(client, tt.AsyncClient):
        return [item async for item in getattr(client, method)(*args, **kwargs)]
    return await asyncio.to_thread(lambda: list(getattr(client, method)(*args, **kwargs)))


async def collect_until_error(client: AnyClient, method: str, *args: Any) -> tuple[list[Any], BaseException]:
    """What an iterating method yields before it raises, and what it raises."""
    items: list[Any] = []
    if isinstance(client, tt.AsyncClient):
        try:
            async for item in getattr(client, method)(*args):
                items.append(item)
        except Exception as error:
            return items, error
        raise AssertionError("no error")

    def run() -> BaseException:
        try:
            for item in getattr(client, method)(*args):
                items.append(item)
        except Exception as error:
            return error
        raise AssertionError("no error")

    return items, await asyncio.to_thread(run)


def keras_reference(path: Path) -> Callable[..., Any]:
    """The model at ``path`` run in this process, as the reference for what the server answers."""
    model = keras.saving.load_model(path, compile=False)
    return lambda *inputs: model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)


def free_port() -> int:
    """A port nothing listens on (yet): bound once by the OS and released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def tt_cli(
    *args: str, address: str | None = None, stdin: str | None = None, env: dict[str, str] | None = None
) -> Run:
    """Run ``tt [--address ADDRESS] ARGS`` without blocking the event loop; TT_* variables are cleared first."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TT_")}
    environment.update({"COLUMNS": "200", **(env or {})})  # wide enough that tables never wrap
    command = [*TT, *(["--address", address] if address else []), *args]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin is not None else None), 120)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())
