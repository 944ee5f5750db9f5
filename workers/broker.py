"""The Dramatiq broker named by `MDMQ_BROKER_URL`: in-process, Redis, or RabbitMQ."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import dramatiq.errors
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name
from dramatiq.middleware import SkipMessage

from models.json_values import first_unstorable
from workers.policy import Lane

log = logging.getLogger(__name__)

# Queues, most urgent first: a lock or wipe of a lost phone never waits behind a million profile pushes.
# One per lane (`workers.policy.lanes` chooses it).
URGENT_QUEUE = Lane.urgent.value
BULK_QUEUE = Lane.bulk.value


# What a send raises when the broker is away: Dramatiq's own connection errors (RabbitMQ), and redis-py's,
# which Dramatiq's Redis broker lets through untranslated.
BROKER_ERRORS: tuple[type[Exception], ...] = (dramatiq.errors.BrokerConnectionError, redis.RedisError)


def build_broker(url: str, *, namespace: str = "mdmq") -> dramatiq.Broker:
    """A broker for `url` (`stub://`, `redis://…`, `rediss://…`, `amqp://…`, `amqps://…`)."""
    broker = _broker(url, namespace)
    broker.add_middleware(RefuseUnstorable())
    return broker


def broker_cause(broker: dramatiq.Broker) -> str | None:
    """Why the broker does not answer, in one line (no password: redis never repeats one); None when it
    does. Only Redis is asked: RabbitMQ's connections are per thread, the in-process broker is always up."""
    client = getattr(broker, "client", None)
    if client is None:
        return None
    try:
        client.ping()
    except redis.RedisError as e:
        return f"unreachable: {e}"
    return None


def _broker(url: str, namespace: str) -> dramatiq.Broker:
    scheme = url.partition("://")[0]
    if scheme == "stub":
        return StubBroker()
    if scheme in ("redis", "rediss"):
        return RedisBroker(url=url, namespace=namespace)  # type: ignore[no-untyped-call]
    if scheme in ("amqp", "amqps"):
        return RabbitmqBroker(url=url)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}")


class RefuseUnstorable(dramatiq.Middleware):
    """A message carrying a value the database cannot store (NUL, a lone surrogate, NaN, ±Infinity, an integer
    beyond 64 bits, nesting deeper than 32: `models.json_values`) is refused before its actor runs: logged
    with where the value sits (never the value), acknowledged, and not retried, since every try would fail
    alike. Messages come from other processes too: the MDM check-in server sends device reports."""

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        problem = first_unstorable({"args": message.args, "kwargs": message.kwargs})
        if problem is None:
            return
        log.warning(
            "%s message refused: %s: %s",
            message.actor_name,
            problem.pointer,
            problem.reason,
            extra={"message_id": message.message_id},
        )
        raise SkipMessage(f"{problem.pointer}: {problem.reason}")


def queue_backlog(
    broker: dramatiq.Broker, queues: tuple[str, ...] = (URGENT_QUEUE, BULK_QUEUE)
) -> dict[tuple[str, str], int]:
    """Messages waiting on each queue, `ready` and `delayed` (not yet due, or due and not yet taken):
    what the workers have still to do. Messages a worker holds are Dramatiq's own in-progress gauges."""
    counts: dict[tuple[str, str], int] = {}
    for queue in queues:
        if isinstance(broker, RedisBroker):
            client = broker.client
            counts[(queue, "ready")] = int(client.llen(f"{broker.namespace}:{queue}"))
            counts[(queue, "delayed")] = int(client.llen(f"{broker.namespace}:{dq_name(queue)}"))
        elif isinstance(broker, RabbitmqBroker):
            ready, delayed, _dead = broker.get_queue_message_counts(queue)
            counts[(queue, "ready")], counts[(queue, "delayed")] = ready, delayed
        elif isinstance(broker, StubBroker):
            stub_queues = broker.queues
            for name, state in ((queue, "ready"), (dq_name(queue), "delayed")):
                counts[(queue, state)] = stub_queues[name].qsize() if name in stub_queues else 0
    return counts
