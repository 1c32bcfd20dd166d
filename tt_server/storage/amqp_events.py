"""AmqpEventBus: registry events fanned out to every replica through RabbitMQ.

Each replica declares the durable fanout exchange ``tt.registry-events`` and binds its own exclusive,
auto-deleted queue to it. ``publish`` first delivers to this replica's own subscribers (so a client that just
moved a label sees it here at once), then sends the event to the exchange; replicas ignore their own messages
when they come back. Events are hints, not the source of truth: a publish that fails (RabbitMQ down) is logged,
not raised, because the registry change is already committed; replicas then converge through the model
manager's polling of the metadata store (resolution TTL and the periodic check of loaded versions).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from tt_server.errors import Unavailable
from tt_server.events import LocalEventBus, Subscriber
from tt_server.types import EventKind, RegistryEvent

log = logging.getLogger(__name__)

EXCHANGE = "tt.registry-events"
PUBLISH_TIMEOUT_SECONDS = 2.0
RECONNECT_INTERVAL_SECONDS = 1.0


class AmqpEventBus:
    def __init__(self, url: str, exchange: str = EXCHANGE) -> None:
        self._url = url
        self._exchange_name = exchange
        self.replica_id = uuid.uuid4().hex
        self._local = LocalEventBus()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    def subscribe(self, subscriber: Subscriber) -> None:
        self._local.subscribe(subscriber)

    async def open(self) -> None:
        try:
            self._connection = await aio_pika.connect_robust(
                self._url,
                client_properties={"connection_name": f"tensortrigger-events-{self.replica_id[:8]}"},
                reconnect_interval=RECONNECT_INTERVAL_SECONDS,  # events resume within a second of RabbitMQ's return
            )
            channel = await self._connection.channel()
            exchange = await channel.declare_exchange(self._exchange_name, aio_pika.ExchangeType.FANOUT, durable=True)
            # Exclusive + auto-delete: the queue lives exactly as long as this replica's connection; the robust
            # connection re-declares and re-binds it after a reconnect.
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
            await queue.bind(exchange)
            await queue.consume(self._on_message, no_ack=True)
        except CONNECTION_EXCEPTIONS as e:
            await self.close()
            raise Unavailable("the event broker (RabbitMQ) is unavailable") from e
        self._channel, self._exchange = channel, exchange

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = self._exchange = None
        if connection is not None:
            await connection.close()

    async def publish(self, event: RegistryEvent) -> None:
        await self._local.publish(event)
        if self._exchange is None:
            return
        if self._connection is not None and not self._connection.connected.is_set():
            # RabbitMQ is away (the robust connection is reconnecting): do not make the caller wait for it.
            log.warning(
                "registry event not sent to other replicas (RabbitMQ unreachable); they will catch up by polling",
                extra={"event": event.kind.value, "model": event.model_name},
            )
            return
        body = json.dumps(
            {"kind": event.kind.value, "model": event.model_name, "version": event.version, "label": event.label}
        ).encode()
        message = aio_pika.Message(body, content_type="application/json", headers={"origin": self.replica_id})
        try:
            # Bounded as a whole: a robust exchange first waits for a lost connection to come back, which would
            # hold up the registry call (already committed) for as long as RabbitMQ is away.
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                await self._exchange.publish(message, routing_key="")
        except (*CONNECTION_EXCEPTIONS, TimeoutError):
            log.warning(
                "registry event not sent to other replicas; they will catch up by polling",
                extra={"event": event.kind.value, "model": event.model_name},
                exc_info=True,
            )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if (message.headers or {}).get("origin") == self.replica_id:
            return
        try:
            data = json.loads(message.body)
            event = RegistryEvent(EventKind(data["kind"]), data["model"], data.get("version"), data.get("label"))
        except (ValueError, KeyError, TypeError):
            log.warning(
                "ignoring a malformed registry event", extra={"body": message.body[:200].decode(errors="replace")}
            )
            return
        await self._local.publish(event)
