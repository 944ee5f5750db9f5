"""The Dramatiq broker named by `MDMQ_BROKER_URL`: in-process, Redis, or RabbitMQ."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import dramatiq
import dramatiq.errors
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name
from dramatiq.middleware import CurrentMessage, SkipMessage

from models.json_values import first_unstorable
from workers.policy import Lane

if TYPE_CHECKING:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

log = logging.getLogger(__name__)

# Queues, most urgent first: a lock or wipe of a lost phone never waits behind a million profile pushes.
# One per lane (`workers.policy.lanes` chooses it), and one for the paced lane's tokens (`workers.fair`):
# served by the urgent lane's process beside the urgent queue, but a queue of its own, so that a lock is
# never behind a paced rollout's tokens on the broker (a queue is first in, first out there, priorities
# order only what a process has fetched) nor its retry behind their delayed ones (a process fetches a
# bounded number of delayed messages per queue ahead of their time).
URGENT_QUEUE = Lane.urgent.value
PACED_QUEUE = "paced"
BULK_QUEUE = Lane.bulk.value


# What a send raises when the broker is away: Dramatiq's own connection errors (RabbitMQ), and redis-py's,
# which Dramatiq's Redis broker lets through untranslated.
BROKER_ERRORS: tuple[type[Exception], ...] = (dramatiq.errors.BrokerConnectionError, redis.RedisError)


def build_broker(
    url: str,
    *,
    namespace: str = "mdmq",
    heartbeat_timeout_s: float = 30.0,
    maintenance_per_million: int = 50_000,
) -> dramatiq.Broker:
    """A broker for `url` (`stub://`, `redis://…`, `rediss://…`, `amqp://…`, `amqps://…`). For Redis:
    the key prefix, how long a worker process may stay silent before its messages go back on their queue,
    and how many broker calls in a million do that maintenance (`Settings` says more)."""
    broker = _broker(url, namespace, heartbeat_timeout_s, maintenance_per_million)
    broker.add_middleware(RefuseUnstorable())
    broker.add_middleware(CurrentMessage())  # a bulk token's claim is its message's id (`workers.fair`)
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


def _broker(url: str, namespace: str, heartbeat_timeout_s: float, maintenance: int) -> dramatiq.Broker:
    scheme = url.partition("://")[0]
    if scheme == "stub":
        return StubBroker()
    if scheme in ("redis", "rediss"):
        return RedisBroker(  # type: ignore[no-untyped-call]
            url=url,
            namespace=namespace,
            heartbeat_timeout=int(heartbeat_timeout_s * 1000),
            maintenance_chance=maintenance,
        )
    if scheme in ("amqp", "amqps"):
        # Imported here: pika and Dramatiq's RabbitMQ broker are 2 MiB of every process on another broker.
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}")


def is_rabbitmq(broker: dramatiq.Broker) -> TypeGuard[RabbitmqBroker]:
    """Whether `broker` is Dramatiq's RabbitMQ broker, without importing it (and pika) when it is not: a
    process whose broker is one has imported it to build it."""
    rabbitmq = sys.modules.get("dramatiq.brokers.rabbitmq")
    return rabbitmq is not None and isinstance(broker, rabbitmq.RabbitmqBroker)


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
    broker: dramatiq.Broker, queues: tuple[str, ...] = (URGENT_QUEUE, PACED_QUEUE, BULK_QUEUE)
) -> dict[tuple[str, str], int]:
    """Messages on each queue by state: `ready` and `delayed` (not yet due, or due and not yet taken) wait
    for a worker; `in_flight` were taken by a live worker process and not yet acknowledged; `orphaned` were
    taken by a process that died, and wait to go back on their queue (Redis only: RabbitMQ puts them back
    at once, and tells unacknowledged messages only to its management API)."""
    counts: dict[tuple[str, str], int] = {}
    for queue in queues:
        if isinstance(broker, RedisBroker):
            client = broker.client
            counts[(queue, "ready")] = int(client.llen(f"{broker.namespace}:{queue}"))
            counts[(queue, "delayed")] = int(client.llen(f"{broker.namespace}:{dq_name(queue)}"))
            counts[(queue, "in_flight")], counts[(queue, "orphaned")] = _redis_taken(broker, queue)
        elif is_rabbitmq(broker):
            ready, delayed, _dead = broker.get_queue_message_counts(queue)
            counts[(queue, "ready")], counts[(queue, "delayed")] = ready, delayed
            counts[(queue, "orphaned")] = 0
        elif isinstance(broker, StubBroker):
            stub_queues = broker.queues
            for name, state in ((queue, "ready"), (dq_name(queue), "delayed")):
                counts[(queue, state)] = stub_queues[name].qsize() if name in stub_queues else 0
    return counts


def _redis_taken(broker: RedisBroker, queue: str) -> tuple[int, int]:
    """Messages of `queue` and its delay queue taken and not acknowledged: by worker processes heard from
    within the heartbeat timeout, and by silent ones. Dramatiq keeps them in a set per process and queue
    (`<namespace>:__acks__.<process>.<queue>`) and each process's last call in `__heartbeats__`; a silent
    process's set is put back on the queue by the next call that does maintenance on it."""
    client = broker.client
    heartbeats = cast(
        "list[tuple[bytes, float]]",
        client.zrange(f"{broker.namespace}:__heartbeats__", 0, -1, withscores=True),
    )
    if not heartbeats:
        return 0, 0
    counting = client.pipeline(transaction=False)
    for process, _ in heartbeats:
        acks = f"{broker.namespace}:__acks__.{process.decode()}"
        counting.scard(f"{acks}.{queue}")
        counting.scard(f"{acks}.{dq_name(queue)}")
    sizes = counting.execute()
    silent_since_ms = time.time() * 1000 - broker.heartbeat_timeout
    live = orphaned = 0
    for i, (_, last_ms) in enumerate(heartbeats):
        taken = int(sizes[2 * i]) + int(sizes[2 * i + 1])
        if last_ms < silent_since_ms:
            orphaned += taken
        else:
            live += taken
    return live, orphaned
