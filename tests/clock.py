"""A clock that moves only when told: tests advance it instead of sleeping or timing the wall clock.

It fits both time seams: called (``clock()``) it is the ``Callable[[], float]`` the model manager reads resolution
expiries on; its ``monotonic``/``sleep``/``sleep_async`` are the client's retry ``Clock``, where each wait is
recorded and moves the time on at once.
"""

from __future__ import annotations

import asyncio
import threading


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()  # the blocking client waits on a worker thread
        self.waits: list[float] = []
        """Every wait asked for through ``sleep``/``sleep_async``, in order."""

    def __call__(self) -> float:
        return self.monotonic()

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.waits.append(seconds)
            self._now += seconds

    async def sleep_async(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)  # still a point where other tasks run, as a real wait is
