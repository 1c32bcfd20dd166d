"""Broker: the job queue. Messages carry only job ids; the job row in the JobStore is the truth.

Delivery is at least once: a message is published persistently and confirmed by the broker before
``publish`` returns; a consumer gets at most ``prefetch`` unacknowledged messages at a time and must settle
each: ``ack`` (done), ``nack(requeue=True)`` (give it back for redelivery) or ``nack(requeue=False)``
(dead-letter it: poison). A message whose consumer goes away (process killed, connection lost) before
settling it is delivered again, possibly to another consumer, so handlers must be idempotent, which leases
make them (see ``storage/jobs.py``).

``AmqpBroker`` (aio-pika, RabbitMQ; production) and ``LocalBroker`` (an asyncio queue in this process, for
the embedded mode) implement it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class Delivery(Protocol):
    """One received message. Settling twice, or after the connection it came on was lost, is a no-op (the
    broker redelivers unsettled messages of a lost connection by itself)."""

    @property
    def job_id(self) -> str: ...

    @property
    def redelivered(self) -> bool:
        """The broker delivered this message before (to this consumer or another)."""
        ...

    async def ack(self) -> None: ...

    async def nack(self, requeue: bool) -> None: ...


class Broker(Protocol):
    async def open(self) -> None:
        """Connect and declare the queue (and its dead-letter queue)."""

    async def close(self) -> None:
        """Disconnect; unsettled messages go back to the queue."""

    async def publish(self, job_id: str) -> None:
        """Queue ``job_id`` durably; returns once the broker has confirmed it. Raises ``Unavailable``."""

    def consume(self, prefetch: int) -> AsyncIterator[Delivery]:
        """Deliveries, at most ``prefetch`` unsettled at a time, until ``stop_consuming()`` or ``close()``."""
        ...

    async def stop_consuming(self) -> None:
        """Stop receiving new deliveries; those already received can still be settled."""

    async def dead_letters(self) -> list[str]:
        """Job ids waiting in the dead-letter queue (for operators and tests; does not remove them)."""
        ...

    async def queued(self) -> int:
        """Messages ready in the queue (not counting unsettled deliveries)."""
        ...

    async def dead_lettered(self) -> int:
        """Messages in the dead-letter queue (counted, not read)."""
        ...
