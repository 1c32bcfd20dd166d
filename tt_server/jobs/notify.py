"""In-process wake-ups for job watchers.

Whoever changes a job in this process (the service, the embedded worker) calls ``notify(job_id)``, and
``WatchJob`` streams in this process re-read the job at once. Changes made by other processes (tt-worker)
are seen by polling, which ``wait``'s timeout provides, so a missed wake-up only delays an update.
"""

from __future__ import annotations

import asyncio
import contextlib


class JobNotifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def notify(self, job_id: str) -> None:
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()

    async def wait(self, job_id: str, seconds: float) -> None:
        """Return after the next ``notify(job_id)`` or after ``seconds``, whichever is first."""
        event = self._events.setdefault(job_id, asyncio.Event())
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)
        finally:
            if self._events.get(job_id) is event and not event.is_set():
                del self._events[job_id]  # no leak for jobs nobody notifies; a concurrent watcher just polls
