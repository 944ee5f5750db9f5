"""The Dramatiq broker named by `MDMQ_BROKER_URL`: in-process, Redis, or RabbitMQ."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

# Queues, most urgent first: a lock or wipe of a lost phone never waits behind a million profile pushes.
URGENT_QUEUE = "urgent"
BULK_QUEUE = "bulk"


def build_broker(url: str, *, namespace: str = "mdmq") -> dramatiq.Broker:
    """A broker for `url` (`stub://`, `redis://…`, `rediss://…`, `amqp://…`, `amqps://…`)."""
    scheme = url.partition("://")[0]
    if scheme == "stub":
        return StubBroker()
    if scheme in ("redis", "rediss"):
        return RedisBroker(url=url, namespace=namespace)  # type: ignore[no-untyped-call]
    if scheme in ("amqp", "amqps"):
        return RabbitmqBroker(url=url)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}")
