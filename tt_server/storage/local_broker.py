"""LocalBroker: the embedded Broker, an in-memory queue inside the server process.

It keeps RabbitMQ's delivery rules so the same worker code runs on both: at most ``prefetch`` unsettled
deliveries per consumer, ``nack(requeue=True)`` puts the message back at the head of the queue marked
redelivered, ``nack(requeue=False)`` dead-letters it, and ``close()`` hands unsettled messages back as a lost
connection would. Messages live only as long as the process: the embedded worker republishes unfinished jobs
from the JobStore when it starts, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from tt_server.errors import Unavailable


class LocalDelivery:
    def __init__(self, broker: LocalBroker, consumer: _Consumer, job_id: str, redelivered: bool) -> None:
        self._broker = broker
        self._consumer = consumer
        self._job_id = job_id
        self._redelivered = redelivered

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def redelivered(self) -> bool:
        return self._redelivered

    async def ack(self) -> None:
        await self._broker._settle(self, requeue=None)

    async def nack(self, requeue: bool) -> None:
        await self._broker._settle(self, requeue=requeue)


class _Consumer:
    def __init__(self, prefetch: int) -> None:
        self.prefetch = max(1, prefetch)
        self.unsettled: set[LocalDelivery] = set()


class LocalBroker:
    def __init__(self) -> None:
        self._ready: deque[tuple[str, bool]] = deque()  # (job id, redelivered)
        self._dead: list[str] = []
        self._changed = asyncio.Condition()
        self._consumers: set[_Consumer] = set()
        self._consuming = True
        self._closed = False

    async def open(self) -> None:
        self._closed = False
        self._consuming = True

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._consuming = False
            for consumer in self._consumers:
                for delivery in consumer.unsettled:
                    self._ready.appendleft((delivery.job_id, True))
                consumer.unsettled.clear()  # later settles of these deliveries are no-ops, as on a lost channel
            self._changed.notify_all()

    async def publish(self, job_id: str) -> None:
        async with self._changed:
            if self._closed:
                raise Unavailable("the job queue is closed")
            self._ready.append((job_id, False))
            self._changed.notify_all()

    async def consume(self, prefetch: int) -> AsyncIterator[LocalDelivery]:
        consumer = _Consumer(prefetch)
        self._consumers.add(consumer)

        def ready() -> bool:
            return not self._consuming or (bool(self._ready) and len(consumer.unsettled) < consumer.prefetch)

        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(ready)
                    if not self._consuming:
                        return
                    job_id, redelivered = self._ready.popleft()
                    delivery = LocalDelivery(self, consumer, job_id, redelivered)
                    consumer.unsettled.add(delivery)
                yield delivery
        finally:
            if not consumer.unsettled:
                self._consumers.discard(consumer)

    async def stop_consuming(self) -> None:
        async with self._changed:
            self._consuming = False
            self._changed.notify_all()

    async def dead_letters(self) -> list[str]:
        return list(self._dead)

    async def queued(self) -> int:
        return len(self._ready)

    async def dead_lettered(self) -> int:
        return len(self._dead)

    async def _settle(self, delivery: LocalDelivery, requeue: bool | None) -> None:
        async with self._changed:
            consumer = delivery._consumer
            if delivery not in consumer.unsettled:
                return  # settled already, or handed back by close()
            consumer.unsettled.discard(delivery)
            if requeue is True:
                self._ready.appendleft((delivery.job_id, True))
            elif requeue is False:
                self._dead.append(delivery.job_id)
            self._changed.notify_all()
