"""AmqpBroker: the production Broker on RabbitMQ through aio-pika.

Topology (declared idempotently by every process on ``open()``): a durable queue ``<name>`` whose rejected
messages dead-letter through the exchange ``<name>.dlx`` into the durable queue ``<name>.dead``. Messages are
persistent and published on a confirm channel, so ``publish`` returns only once RabbitMQ has the message
safely. Consumers use their own channel with ``prefetch`` and manual acks.

The connection is aio-pika's robust one: after a lost connection it reconnects every second, re-declares the
topology and restarts consumers. Messages unsettled on the lost channel are redelivered by RabbitMQ (to any
consumer); settling one of them afterwards fails on its dead channel, which is logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection, ConsumerTag
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, MessageProcessError, PublishError

from tt_server.errors import Unavailable

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 10.0  # default; covers waiting for a reconnect, then the caller gets UNAVAILABLE
RECONNECT_INTERVAL_SECONDS = 1.0


class AmqpDelivery:
    def __init__(self, message: AbstractIncomingMessage) -> None:
        self._message = message

    @property
    def job_id(self) -> str:
        return self._message.body.decode("utf-8", "replace")

    @property
    def redelivered(self) -> bool:
        return bool(self._message.redelivered)

    async def ack(self) -> None:
        await self._settle(None)

    async def nack(self, requeue: bool) -> None:
        await self._settle(requeue)

    async def _settle(self, requeue: bool | None) -> None:
        try:
            if requeue is None:
                await self._message.ack()
            else:
                await self._message.nack(requeue=requeue)
        except MessageProcessError:
            pass  # settled already
        except CONNECTION_EXCEPTIONS:
            # Its channel is gone with a lost connection; RabbitMQ redelivers the message by itself.
            log.info("could not settle a job message (connection lost); it will be redelivered", exc_info=True)


class AmqpBroker:
    def __init__(
        self,
        url: str,
        queue: str,
        connection_name: str = "tensortrigger",
        publish_timeout: float = PUBLISH_TIMEOUT_SECONDS,
        heartbeat: int = 60,
    ) -> None:
        self._url = url
        self._heartbeat = heartbeat
        self._queue_name = queue
        self._connection_name = connection_name
        self._publish_timeout = publish_timeout
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._inboxes: list[asyncio.Queue[AbstractIncomingMessage | None]] = []

    @property
    def _arguments(self) -> dict[str, Any]:
        return {"x-dead-letter-exchange": f"{self._queue_name}.dlx", "x-dead-letter-routing-key": self._queue_name}

    async def open(self) -> None:
        try:
            self._connection = await aio_pika.connect_robust(
                self._url,
                client_properties={"connection_name": self._connection_name},
                reconnect_interval=RECONNECT_INTERVAL_SECONDS,
                heartbeat=self._heartbeat,
            )
            channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            dlx = await channel.declare_exchange(f"{self._queue_name}.dlx", aio_pika.ExchangeType.DIRECT, durable=True)
            dead = await channel.declare_queue(f"{self._queue_name}.dead", durable=True)
            await dead.bind(dlx, routing_key=self._queue_name)
            await self._declare(channel)
        except CONNECTION_EXCEPTIONS as e:
            await self.close()
            raise Unavailable("the job queue (RabbitMQ) is unavailable") from e
        self._publish_channel = channel

    async def _declare(self, channel: AbstractChannel, passive: bool = False) -> aio_pika.abc.AbstractQueue:
        return await channel.declare_queue(self._queue_name, durable=True, arguments=self._arguments, passive=passive)

    async def close(self) -> None:
        for inbox in self._inboxes:
            inbox.put_nowait(None)
        connection, self._connection = self._connection, None
        self._publish_channel = None
        if connection is not None:
            await connection.close()

    @property
    def _channel(self) -> AbstractChannel:
        if self._publish_channel is None:
            raise Unavailable("the job queue is not open")
        return self._publish_channel

    async def publish(self, job_id: str) -> None:
        message = aio_pika.Message(
            job_id.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="text/plain"
        )
        deadline = time.monotonic() + self._publish_timeout
        while True:
            channel = self._channel
            try:
                # The whole call is bounded, not only the confirm (publish's own timeout): on a robust channel it
                # first waits for the connection to be back, however long RabbitMQ stays away.
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    await channel.default_exchange.publish(message, routing_key=self._queue_name, mandatory=True)
                return
            except (DeliveryError, PublishError) as e:  # nacked or unroutable: RabbitMQ refused it
                raise Unavailable(f"the job queue refused the message: {e}") from e
            except (*CONNECTION_EXCEPTIONS, TimeoutError) as e:
                # A robust connection reconnects in the background; a lost confirm may mean a duplicate,
                # which consumers tolerate (leases), whereas a lost job would not be.
                if time.monotonic() >= deadline:
                    raise Unavailable("the job queue (RabbitMQ) is unavailable") from e
                await asyncio.sleep(0.2)

    async def consume(self, prefetch: int) -> AsyncIterator[AmqpDelivery]:
        if self._connection is None:
            raise Unavailable("the job queue is not open")
        channel = await self._connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=max(1, prefetch))
        queue = await self._declare(channel)
        inbox: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._inboxes.append(inbox)
        tag: ConsumerTag = await queue.consume(inbox.put, no_ack=False)
        try:
            while (message := await inbox.get()) is not None:
                yield AmqpDelivery(message)
        finally:
            self._inboxes.remove(inbox)
            # Only the consumer is cancelled: the channel stays open so deliveries already handed out can still
            # be settled; close() closes it with the connection.
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await queue.cancel(tag)

    async def stop_consuming(self) -> None:
        for inbox in self._inboxes:
            inbox.put_nowait(None)

    async def dead_letters(self) -> list[str]:
        return await self._peek(f"{self._queue_name}.dead")

    async def queued(self) -> int:
        if self._connection is None:
            raise Unavailable("the job queue is not open")
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            queue = await self._declare(channel, passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            await channel.close()

    async def dead_lettered(self) -> int:
        if self._connection is None:
            raise Unavailable("the job queue is not open")
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            queue = await channel.declare_queue(f"{self._queue_name}.dead", durable=True, passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            await channel.close()

    async def _peek(self, queue_name: str) -> list[str]:
        """Read every message of a queue without consuming it: gets without acks on a temporary channel,
        whose closing hands them all back."""
        if self._connection is None:
            raise Unavailable("the job queue is not open")
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            queue = await channel.declare_queue(queue_name, durable=True, passive=True)
            found = []
            while (message := await queue.get(no_ack=False, fail=False)) is not None:
                found.append(message.body.decode("utf-8", "replace"))
            return found
        finally:
            await channel.close()
