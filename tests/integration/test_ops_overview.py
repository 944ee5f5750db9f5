"""The operator's overview on real brokers, Redis and RabbitMQ: a queue's ready, delayed, in-flight and
dead messages, and the worker that holds one, counted as the page, `mdmq queues` and the gauges show them.
Each test declares a queue of its own, so that other tests' messages on the same broker do not count."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name, xq_name
from prometheus_client import REGISTRY
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.types import utcnow
from scheduler import overview_gauges
from tests.helpers import free_ports, wait_until
from tests.services import RABBITMQ_URL, REDIS_URL, require
from workers.broker import build_broker
from workers.overview import gather_overview
from workers.queues import PRESENCE_KEY, QueueFigures, WorkerPresence, queue_figures, worker_beats


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[dramatiq.Broker]:
    url = REDIS_URL if request.param == "redis" else RABBITMQ_URL
    require(url, request.param)
    broker = build_broker(url)
    yield broker
    broker.close()


def test_each_state_of_a_queue_is_counted_and_the_worker_holding_a_message_is_seen(
    broker: dramatiq.Broker,
) -> None:
    queue, idle = f"ops-{uuid.uuid4().hex[:10]}", f"ops-idle-{uuid.uuid4().hex[:10]}"
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(60)

    def fail() -> None:
        raise RuntimeError("refused for the test")

    holding = dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"{queue}_hold", max_retries=0)(hold)
    failing = dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"{queue}_fail", max_retries=0)(fail)
    later = dramatiq.actor(broker=broker, queue_name=idle, actor_name=f"{idle}_later")(hold)
    broker.add_middleware(WorkerPresence())
    worker = dramatiq.Worker(broker, queues={queue}, worker_threads=1, worker_timeout=100)
    worker.queue_prefetch = 1
    worker.start()
    try:
        failing.send()
        wait_until(lambda: _figures(broker, queue).dead == 1, 30, "the failed message to be dead-lettered")
        holding.send()
        assert started.wait(30), "the worker took the message"
        for _ in range(3):
            holding.send()
        # On a queue no worker serves: a worker takes a delayed message and holds it till it is due.
        later.send_with_options(delay=3_600_000)
        # RabbitMQ's counts follow a publish a moment later.
        wait_until(lambda: _figures(broker, queue).ready == 3, 30, "three messages ready")
        wait_until(lambda: _figures(broker, idle).delayed == 1, 30, "the delayed message")

        figures = _figures(broker, queue)
        assert (figures.ready, figures.delayed, figures.dead) == (3, 0, 1)
        if not isinstance(broker, RabbitmqBroker):
            assert (figures.in_flight, figures.orphaned) == (1, 0), "the message the live worker holds"
            beats = worker_beats(broker, now_ms=int(utcnow().timestamp() * 1000))
            assert isinstance(broker, RedisBroker)
            [beat] = [b for b in beats if b.worker_id == broker.broker_id]
            assert beat.name.endswith(f":{os.getpid()}"), "named by its host and pid"
        else:
            assert (figures.in_flight, figures.orphaned) == (None, None), "RabbitMQ tells no client these"
            assert figures.consumers == 1
    finally:
        release.set()
        worker.stop()
        _drop(broker, queue, idle)
    if isinstance(broker, RedisBroker):
        now_ms = int(utcnow().timestamp() * 1000)
        assert broker.broker_id not in {b.worker_id for b in worker_beats(broker, now_ms=now_ms)}, (
            "a worker shut down is no longer listed, though its last heartbeat is fresh"
        )


def test_the_overview_gathers_both_queues_and_its_gauges_show_them(
    broker: dramatiq.Broker, pg: Engine
) -> None:
    with Session(pg) as session:
        overview = gather_overview(session, broker, now=utcnow())

    assert overview.broker in ("redis", "rabbitmq")
    assert [q.queue for q in overview.queues] == ["urgent", "paced", "bulk"]
    assert (overview.rollouts, overview.holds, overview.credentials) == ([], [], [])
    overview_gauges.export_overview(overview)
    served = scraped_names()
    assert {"mdmq_queue_dead_messages", "mdmq_rollouts_running"} <= served
    assert ("mdmq_workers_live" in served) == (overview.live_workers is not None)


def _drop(broker: dramatiq.Broker, *queues: str) -> None:
    """The test's queues gone, their delay and dead-letter queues with them."""
    for queue in queues:
        broker.flush(queue)
        if isinstance(broker, RabbitmqBroker):
            for name in (queue, dq_name(queue), xq_name(queue)):
                broker.channel.queue_delete(name)


def _figures(broker: dramatiq.Broker, queue: str) -> QueueFigures:
    [figures] = queue_figures(broker, (queue,))
    return figures


def scraped_names() -> set[str]:
    return {sample.name for family in REGISTRY.collect() for sample in family.samples}


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_a_broker_that_does_not_answer_leaves_its_figures_out_and_says_why(scheme: str, pg: Engine) -> None:
    [port] = free_ports(1)  # nothing listens there
    broker = build_broker(f"{scheme}://127.0.0.1:{port}/")
    try:
        with Session(pg) as session:
            overview = gather_overview(session, broker, now=utcnow())
    finally:
        broker.close()

    assert overview.broker_problem is not None
    assert overview.broker_problem.startswith("unreachable: ")
    assert (overview.queues, overview.workers, overview.live_workers) == ([], [], None)
    assert overview.as_json()["brokerProblem"] == overview.broker_problem


def test_a_booting_worker_forgets_silent_workers_but_not_those_still_booting() -> None:
    """The processes of one command boot together: the second must not forget the first, named a moment
    before and yet to fetch (and so to beat); a process whose heartbeat stopped long ago is forgotten."""
    require(REDIS_URL, "redis")
    namespace = f"presence-{uuid.uuid4().hex[:10]}"
    first, second, dead = (build_broker(REDIS_URL, namespace=namespace) for _ in range(3))
    assert isinstance(first, RedisBroker)
    assert isinstance(second, RedisBroker)
    assert isinstance(dead, RedisBroker)
    names, beats = f"{namespace}:{PRESENCE_KEY}", f"{namespace}:__heartbeats__"
    try:
        dead.client.hset(names, dead.broker_id, "gone:1")
        dead.client.zadd(beats, {dead.broker_id: current_millis() - 2 * dead.heartbeat_timeout})
        for booting in (first, second):
            WorkerPresence().after_worker_boot(booting, dramatiq.Worker(booting, worker_threads=1))

        named = {k.decode() if isinstance(k, bytes) else k for k in dead.client.hkeys(names)}
        assert {first.broker_id, second.broker_id} <= named, "the first, yet to beat, is still named"
        assert dead.broker_id not in named, "a process silent past the timeout is forgotten"
    finally:
        dead.client.delete(names, beats)
        for b in (first, second, dead):
            b.close()
