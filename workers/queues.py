"""What the broker holds, read for the operator's page, `mdmq queues` and the scheduler's gauges: each
queue's messages by state, and the worker processes the broker knows of. Redis, RabbitMQ and the
in-process broker; a figure a broker cannot tell is None, never a made-up 0."""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis, xq_name

from config.errors import MdmqError
from workers.broker import BROKER_ERRORS, BULK_QUEUE, PACED_QUEUE, URGENT_QUEUE, is_rabbitmq, queue_backlog

QUEUES = (URGENT_QUEUE, PACED_QUEUE, BULK_QUEUE)
# Beside Dramatiq's keys: broker id -> "host:pid" of each worker process (`WorkerPresence`).
PRESENCE_KEY = "mdmq.workers"

log = logging.getLogger(__name__)


def read_errors() -> tuple[type[Exception], ...]:
    """What a read of the broker raises when it does not answer: what a send raises, and pika's own errors,
    which the reads below (Dramatiq's queue declares) meet untranslated; pika's only once a RabbitMQ broker
    has imported it."""
    pika_exceptions = sys.modules.get("pika.exceptions")
    if pika_exceptions is None:
        return BROKER_ERRORS
    return (*BROKER_ERRORS, pika_exceptions.AMQPError)


class BrokerUnreachable(MdmqError):
    """The broker did not answer: its figures are unknown."""


@dataclass(frozen=True)
class QueueFigures:
    """One queue: messages ready, delayed (a retry, or not yet due), held by a live worker and not yet
    acknowledged (`in_flight`), held by a dead one until the broker gives them back (`orphaned`), and
    dead-lettered. RabbitMQ tells a client neither of the held counts: None."""

    queue: str
    ready: int
    delayed: int
    in_flight: int | None
    dead: int
    orphaned: int | None = None  # taken by a worker process that died; back on the queue after its timeout
    consumers: int | None = None  # RabbitMQ's count of consumers on the queue; None on other brokers


@dataclass(frozen=True)
class WorkerBeat:
    """A worker process the broker has seen lately: the broker's id of it, its host and pid, and how long ago
    its last heartbeat was (a worker beats each time it fetches, every `MDMQ_WORKER_POLL_MS` when idle)."""

    worker_id: str
    name: str  # host:pid, and "(urgent)" for the urgent lane's process
    age_s: float


class WorkerPresence(dramatiq.Middleware):
    """Names each worker process on Redis (its host and pid) from its boot to its shutdown. Dramatiq's
    heartbeats are written by every process that uses the broker, the API's and the scheduler's sends
    included: the overview counts as workers only the heartbeats of processes named here. A booting worker
    forgets the names of processes that stopped beating (killed, never shut down). A process of a `lane` of
    its own (the urgent lane's) is named with it."""

    def __init__(self, *, lane: str | None = None) -> None:
        self.lane = lane

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if not isinstance(broker, RedisBroker):
            return
        name = f"{socket.gethostname()}:{os.getpid()}"
        if self.lane is not None:
            name += f" ({self.lane})"
        try:
            broker.client.hset(_presence(broker), broker.broker_id, name)
            _forget_silent(broker)
        except redis.RedisError as e:  # a name for the page only: the worker works without it
            log.warning("could not name this worker on the broker: %s", e)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if not isinstance(broker, RedisBroker):
            return
        try:
            broker.client.hdel(_presence(broker), broker.broker_id)
        except redis.RedisError as e:
            log.warning("could not remove this worker's name from the broker: %s", e)


def _presence(broker: RedisBroker) -> str:
    return f"{broker.namespace}:{PRESENCE_KEY}"


def _forget_silent(broker: RedisBroker) -> None:
    """Forget the other processes whose heartbeat stopped (this one has not beaten yet at its boot). Not
    those that have not beaten yet either: the processes of one command boot together, and one named a
    moment ago fetches (and beats) only once its consumers run. A process killed before its first fetch
    keeps a name no heartbeat ever lists."""
    client = broker.client
    ids = [i for i in (_text(i) for i in client.hkeys(_presence(broker))) if i != broker.broker_id]
    beats: Any = client.pipeline(transaction=False)
    for worker_id in ids:
        beats.zscore(f"{broker.namespace}:__heartbeats__", worker_id)
    scores = beats.execute() if ids else []
    oldest = current_millis() - broker.heartbeat_timeout
    silent = [i for i, score in zip(ids, scores, strict=True) if score is not None and score < oldest]
    if silent:
        client.hdel(_presence(broker), *silent)


def broker_figures(broker: dramatiq.Broker, *, now_ms: int) -> tuple[list[QueueFigures], list[WorkerBeat]]:
    """Both queues' figures and the live workers; `BrokerUnreachable` (naming the client's error, which
    repeats no password) when the broker does not answer."""
    try:
        return queue_figures(broker), worker_beats(broker, now_ms=now_ms)
    except read_errors() as e:
        raise BrokerUnreachable(f"unreachable: {type(e).__name__}: {e}") from None


def queue_figures(broker: dramatiq.Broker, queues: tuple[str, ...] = QUEUES) -> list[QueueFigures]:
    backlog = queue_backlog(broker, queues)
    dead, consumers = dead_letters(broker, queues), _consumers(broker, queues)
    held = isinstance(broker, RedisBroker)  # the held counts are known on Redis only
    return [
        QueueFigures(
            queue,
            ready=backlog.get((queue, "ready"), 0),
            delayed=backlog.get((queue, "delayed"), 0),
            in_flight=backlog.get((queue, "in_flight"), 0) if held else None,
            dead=dead.get(queue, 0),
            orphaned=backlog.get((queue, "orphaned"), 0) if held else None,
            consumers=consumers.get(queue),
        )
        for queue in queues
    ]


def dead_letters(broker: dramatiq.Broker, queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
    """Messages that ran out of retries, kept on the queue's dead-letter queue (Redis: 7 days)."""
    if isinstance(broker, RedisBroker):
        client, ns = broker.client, broker.namespace
        return {queue: int(client.zcard(f"{ns}:{xq_name(queue)}")) for queue in queues}
    if is_rabbitmq(broker):
        return {queue: broker.get_queue_message_counts(queue)[2] for queue in queues}
    if isinstance(broker, StubBroker):
        return {queue: len(broker.dead_letters_by_queue.get(queue, ())) for queue in queues}
    return {}


def _consumers(broker: dramatiq.Broker, queues: tuple[str, ...]) -> dict[str, int]:
    if not is_rabbitmq(broker):
        return {}
    # Dramatiq's own declare, as its message counts (`get_queue_message_counts`) use: a declare with the
    # arguments Dramatiq declared the queue with, which changes nothing and answers the consumer count.
    declare: Any = broker._declare_queue
    return {queue: int(declare(queue).method.consumer_count) for queue in queues}


def worker_beats(broker: dramatiq.Broker, *, now_ms: int, within_ms: int | None = None) -> list[WorkerBeat]:
    """The worker processes (named by `WorkerPresence`) whose heartbeat is younger than `within_ms` (the
    broker's own timeout, after which it gives a silent worker's messages back), freshest first. Redis only:
    RabbitMQ keeps no heartbeats, its consumer counts (`QueueFigures.consumers`) stand for the workers."""
    if not isinstance(broker, RedisBroker):
        return []
    within = broker.heartbeat_timeout if within_ms is None else within_ms
    beats: Any = broker.client.zrangebyscore(
        f"{broker.namespace}:__heartbeats__", now_ms - within, "+inf", withscores=True
    )
    ids = [_text(worker) for worker, _ in beats]
    names: Any = broker.client.hmget(_presence(broker), ids) if ids else []
    found = [
        WorkerBeat(worker_id, _text(name), max(0.0, (now_ms - score) / 1000))
        for worker_id, name, (_, score) in zip(ids, names, beats, strict=True)
        if name is not None
    ]
    return sorted(found, key=lambda beat: beat.age_s)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
