"""How busy serving is, so background model work (online training) can step aside for it.

One per process: every servable's model calls share the inference thread and the cores anyway. The batcher
counts requests from submission to answer; a training thread calls ``wait_idle`` before each step, so a
Predict that is waiting does not also wait behind a train step (bounded, so training still progresses under
constant traffic).
"""

from __future__ import annotations

import time


class ServingActivity:
    def __init__(self) -> None:
        self._pending = 0  # changed on the event loop only; read from other threads (an int read is atomic)

    def enter(self) -> None:
        self._pending += 1

    def leave(self) -> None:
        self._pending -= 1

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def wait_idle(self, max_wait: float) -> None:
        """Block the calling (non-loop) thread until no request is pending, or ``max_wait`` seconds."""
        if self._pending <= 0:
            return
        deadline = time.monotonic() + max_wait
        while self._pending > 0 and time.monotonic() < deadline:
            time.sleep(0.0001)  # releases the GIL to the event loop and the inference thread


SERVING = ServingActivity()
