"""The brokers `MDMQ_BROKER_URL` names carry a message from sender to actor: real Redis and real RabbitMQ."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import dramatiq
import pytest
import redis

from tests.services import RABBITMQ_URL, REDIS_URL, require
from workers.broker import build_broker


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[dramatiq.Broker]:
    url = REDIS_URL if request.param == "redis" else RABBITMQ_URL
    require(url, request.param)
    namespace = f"mdmq-test-{uuid.uuid4().hex[:8]}"
    broker = build_broker(url, namespace=namespace)
    yield broker
    broker.close()
    if request.param == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)
        client.close()


def test_a_message_sent_through_the_broker_reaches_its_actor(broker: dramatiq.Broker) -> None:
    queue = f"test-{uuid.uuid4().hex[:8]}"
    received: list[str] = []
    done = threading.Event()

    def record(value: str) -> None:
        received.append(value)
        done.set()

    actor = dramatiq.Actor(
        record, actor_name=f"record_{queue}", queue_name=queue, priority=0, options={}, broker=broker
    )
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        actor.send("hello")
        assert done.wait(20), "the worker never ran the actor"
    finally:
        worker.stop()
        if hasattr(broker, "channel"):  # RabbitMQ: leave no test queue behind
            broker.channel.queue_delete(queue)
    assert received == ["hello"]
