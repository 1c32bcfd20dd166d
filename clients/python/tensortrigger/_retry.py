"""Retries of idempotent calls on UNAVAILABLE, with exponential backoff and jitter.

Why our own loop rather than gRPC's service-config ``retryPolicy``: gRPC stops retrying a stream as soon as one
response message has arrived, so it could not resume ``GetJobResults`` from the received offset or re-subscribe
``WatchJob`` after a server restart; it caps attempts at 5 whatever the deadline; and it retries silently. The
decisions live here once (``Attempts``); the sync and async clients differ only in how they sleep. Time comes
from a ``Clock`` (the system's by default), so a test can advance a fake one instead of sleeping.

Only reads (Get/List/Download/Watch/results, health) and ``Predict`` (a pure function of its inputs) are retried.
Writes never are: an UNAVAILABLE write may still have happened, and repeating it would upload a second version.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import grpc


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How idempotent calls are retried when the server is unavailable.

    Attempt ``n`` (from 1) waits ``min(max_backoff, initial_backoff * multiplier ** (n - 1))`` seconds, scaled by
    a random factor in ``[1 - jitter, 1 + jitter]`` so that many clients cut off together do not come back in
    lock-step. Retries also stop when the next wait would pass the call's deadline.
    """

    max_attempts: int = 5
    """Attempts in all, the first included; 1 disables retries."""
    initial_backoff: float = 0.2
    """Seconds before the first retry."""
    max_backoff: float = 5.0
    """Longest wait between two attempts, in seconds."""
    multiplier: float = 2.0
    """Growth of the wait from one retry to the next."""
    jitter: float = 0.2
    """Relative random spread of each wait (0.2 = plus or minus 20%)."""

    def delays(self) -> Iterator[float]:
        """The waits before each retry: ``max_attempts - 1`` of them."""
        backoff = self.initial_backoff
        for _ in range(self.max_attempts - 1):
            yield min(backoff, self.max_backoff) * random.uniform(1 - self.jitter, 1 + self.jitter)
            backoff *= self.multiplier


class Clock(Protocol):
    """Time as retries see it: the clock a call's deadline is read on and the waits between attempts."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait (the blocking ``Client``)."""
        ...

    async def sleep_async(self, seconds: float) -> None:
        """Wait (the asyncio ``AsyncClient``)."""
        ...


class SystemClock:
    """The real time: ``time.monotonic``, ``time.sleep`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def sleep_async(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


class Attempts:
    """The retry state of one call: its deadline across all attempts, and the waits left."""

    def __init__(self, policy: RetryPolicy | None, timeout: float | None, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._deadline = None if timeout is None else clock.monotonic() + timeout
        self._delays = policy.delays() if policy is not None else iter(())

    def timeout(self) -> float | None:
        """Seconds left for the next attempt: the per-call timeout covers every attempt, not each one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._clock.monotonic())

    def next_delay(self, error: grpc.RpcError) -> float | None:
        """Seconds to wait before trying again after ``error``, or None to give up and raise it."""
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            return None
        delay = next(self._delays, None)
        if delay is None or (self._deadline is not None and self._clock.monotonic() + delay >= self._deadline):
            return None
        return delay
