"""Broker semantics, the same for the in-process queue and RabbitMQ: confirms, prefetch, ack, requeue,
dead-lettering, redelivery of what a lost consumer left unsettled."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from tt_server.storage.amqp import AmqpBroker
from tt_server.storage.broker import Broker, Delivery
from tt_server.storage.local_broker import LocalBroker


@pytest.fixture(params=["local", "amqp"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], Broker]]:
    """Make opened brokers on one queue (RabbitMQ: a queue of this test's own); all closed afterwards."""
    made: list[Broker] = []
    queue = f"tt.test.{uuid.uuid4().hex[:8]}"
    local = LocalBroker()
    amqp_url = request.getfixturevalue("amqp_url") if request.param == "amqp" else ""

    async def make() -> Broker:
        broker: Broker = local if request.param == "local" else AmqpBroker(amqp_url, queue)
        await broker.open()
        made.append(broker)
        return broker

    yield make  # type: ignore[misc]
    for broker in made:
        await broker.close()


async def take(deliveries: AsyncIterator[Delivery]) -> Delivery:
    return await asyncio.wait_for(anext(deliveries), 10.0)


async def nothing(deliveries: AsyncIterator[Delivery], wait: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(deliveries), wait)


async def test_prefetch_ack_requeue_dead_letter(make_broker) -> None:
    broker = await make_broker()
    for job_id in ("a", "b", "c"):
        await broker.publish(job_id)
    deliveries = broker.consume(prefetch=1)
    first = await take(deliveries)
    assert (first.job_id, first.redelivered) == ("a", False)
    pending = asyncio.ensure_future(anext(deliveries))
    await asyncio.sleep(0.3)
    assert not pending.done()  # prefetch 1: nothing more until "a" is settled
    await first.nack(requeue=True)
    again = await asyncio.wait_for(pending, 10)
    assert (again.job_id, again.redelivered) == ("a", True)
    await again.ack()
    await again.ack()  # settling twice is a no-op
    second = await take(deliveries)
    assert second.job_id == "b"
    await second.nack(requeue=False)
    third = await take(deliveries)
    assert third.job_id == "c"
    await third.ack()
    await nothing(deliveries)
    for _ in range(50):
        if await broker.dead_letters() == ["b"]:
            break
        await asyncio.sleep(0.1)
    assert await broker.dead_letters() == ["b"]
    assert await broker.dead_letters() == ["b"]  # peeking does not consume
    assert await broker.queued() == 0
    await broker.stop_consuming()
    await asyncio.wait_for(anext(deliveries, None), 10)  # the iterator ends


async def test_unsettled_messages_are_redelivered_after_the_consumer_goes(make_broker) -> None:
    publisher = await make_broker()
    await publisher.publish("job-1")
    consumer = await make_broker()
    delivery = await take(consumer.consume(prefetch=1))
    assert delivery.job_id == "job-1"
    await consumer.close()  # a killed worker's connection closes just like this, without settling
    await delivery.ack()  # too late: a no-op on the dead connection, not an error
    other = await make_broker()
    again = await take(other.consume(prefetch=1))
    assert (again.job_id, again.redelivered) == ("job-1", True)
    await again.ack()
