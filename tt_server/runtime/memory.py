"""Keeps long-lived objects out of the garbage collector's full walks.

A process that has imported TensorFlow and loaded a Keras model holds millions of objects that live as long as
the process or the model. Python's cyclic collector walks all of them on every full (generation 2) collection:
100-300 ms on the serving machine, during which nothing else in the process runs; those stalls were the tail of
the Predict p99 under load. ``settle()`` collects once, then freezes everything left (``gc.freeze``), so later
full collections only walk objects created since. It runs at start-up and after each model load or unload
(rare, and already slow); since it unfreezes first, nothing frozen stays uncollected past the next settle
(e.g. an unloaded model still in use by a call when it ran).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

SETTLE_DELAY_SECONDS = 2.0  # after an unload: let the calls still using the old model finish first


def settle() -> None:
    """Collect cyclic garbage, then freeze every object left."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.debug(
        "garbage collector settled",
        extra={"frozen": gc.get_freeze_count(), "seconds": round(time.perf_counter() - started, 3)},
    )


class Settler:
    """Coalesces ``settle()`` requests on the event loop: at most one pending, run ``SETTLE_DELAY_SECONDS``
    after the first."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._pending: asyncio.TimerHandle | None = None

    def soon(self) -> None:
        if not self._enabled or self._pending is not None:
            return
        self._pending = asyncio.get_running_loop().call_later(SETTLE_DELAY_SECONDS, self._run)

    def _run(self) -> None:
        self._pending = None
        settle()

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
