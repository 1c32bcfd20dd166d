"""Waiting for what another process, thread or task does: poll for the condition with a generous deadline (a
loaded 2-core CI machine is slow, never wrong), and read the log files such processes are still writing."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], T | Awaitable[T]], what: str, *, within: float = 60.0, pause: float = 0.05
) -> T:
    """Call ``check`` (plain or async) until it returns something truthy, and return that; fail after
    ``within`` seconds with ``what`` and the last value."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        assert time.monotonic() < deadline, f"{what}: not within {within} s (last: {value!r})"
        await asyncio.sleep(pause)


def json_records(path: Path) -> list[dict[str, object]]:
    """The JSON log records in ``path``; only whole lines, as the process writing it may be halfway through
    the last one."""
    text = path.read_text(errors="replace")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]
