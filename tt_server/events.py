"""Registry events: published after each committed registry change, applied by every replica.

``LocalEventBus`` delivers in-process (embedded mode and the publishing replica itself); the AMQP fanout
implementation lives with the broker. Subscribers are async callables; one failing subscriber is logged and
does not stop the others.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from tt_server.types import RegistryEvent

log = logging.getLogger(__name__)

Subscriber = Callable[[RegistryEvent], Awaitable[None]]


class EventBus(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, event: RegistryEvent) -> None: ...

    def subscribe(self, subscriber: Subscriber) -> None: ...


class LocalEventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    async def open(self) -> None:
        """Nothing to connect: in-process."""

    async def close(self) -> None:
        pass

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    async def publish(self, event: RegistryEvent) -> None:
        for subscriber in list(self._subscribers):
            try:
                await subscriber(event)
            except Exception:
                log.exception("registry event subscriber failed", extra={"event": event.kind.value})
