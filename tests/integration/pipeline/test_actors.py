"""The actors on a real worker: device reports (messages that overtake each other, and bad input, never move
a deployment back or change anything else), and an operator's cancel and retry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import dramatiq
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from config.settings import Settings
from models.statuses import Kind, Status
from models.store import get_deployment
from models.types import utcnow
from tests.conftest import MakeDeployments
from tests.helpers import device_of, events_of, force_status, status_of
from workers.actors import Actors, declare_actors
from workers.app import App
from workers.broker import BULK_QUEUE, PACED_QUEUE, URGENT_QUEUE
from workers.fair import FairLaneName
from workers.push_gateway import SEND_TIMEOUT_S


@pytest.fixture
def app(pg: Engine, postgres_url: str) -> Iterator[App]:
    app = App(Settings(database_url=postgres_url, broker_url="stub://"))
    yield app
    app.close()


@pytest.fixture
def actors(app: App) -> Iterator[Actors]:
    actors = declare_actors(app)
    worker = dramatiq.Worker(app.broker, worker_threads=1, worker_timeout=100)
    worker.start()
    yield actors
    worker.stop()


def _deliver(app: App, actors: Actors, *messages: tuple[object, ...]) -> None:
    """Send the report messages in this order, each from the device of its deployment, and wait until the
    worker has handled them all."""
    for args in messages:
        device_id = device_of(app.engine, str(args[0]))
        actors.record_report.send(*args, device_id=device_id, organization_id="acme")
    _settle(app)


def _settle(app: App) -> None:
    for queue in (URGENT_QUEUE, BULK_QUEUE):
        app.broker.join(queue, timeout=20_000)


def test_a_report_that_arrives_after_a_later_one_changes_nothing(
    pg: Engine, app: App, actors: Actors, make_deployments: MakeDeployments
) -> None:
    [deployment_id] = make_deployments(pg, Kind.profile)
    fetched_at = utcnow()
    not_now_at = fetched_at + timedelta(seconds=1)

    # The device sent `fetched`, then `not_now`; the messages arrive the other way round.
    _deliver(
        app,
        actors,
        (deployment_id, "not_now", "device locked with passcode", None, not_now_at.isoformat()),
        (deployment_id, "fetched", None, None, fetched_at.isoformat()),
    )

    assert status_of(pg, deployment_id) is Status.postponed, "the late `fetched` did not move it back"
    assert [(e.from_status, e.to_status) for e in events_of(pg, deployment_id)] == [
        (Status.queued, Status.postponed)
    ]


def test_reports_in_order_through_the_actor_complete_the_deployment(
    pg: Engine, app: App, actors: Actors, make_deployments: MakeDeployments
) -> None:
    [deployment_id] = make_deployments(pg, Kind.app)
    start = utcnow()
    steps = ["fetched", "processing", "acknowledged"]

    _deliver(
        app,
        actors,
        *(
            (deployment_id, report, None, None, (start + timedelta(seconds=i)).isoformat())
            for i, report in enumerate(steps)
        ),
    )

    assert status_of(pg, deployment_id) is Status.completed
    assert len(events_of(pg, deployment_id)) == 3


@pytest.mark.parametrize(
    ("report", "reported_at"),
    [
        ("exploded", None),  # not a report
        ("fetched", "yesterday"),  # not a time
        ("fetched", "2026-11-23T10:00:00"),  # no UTC offset: ambiguous
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    pg: Engine,
    app: App,
    actors: Actors,
    make_deployments: MakeDeployments,
    report: str,
    reported_at: str | None,
) -> None:
    [deployment_id] = make_deployments(pg, Kind.profile)

    _deliver(app, actors, (deployment_id, report, None, None, reported_at))

    assert status_of(pg, deployment_id) is Status.queued
    assert events_of(pg, deployment_id) == []


def test_cancel_through_the_actor_stops_what_has_not_started_and_nothing_else(
    pg: Engine, app: App, actors: Actors, make_deployments: MakeDeployments
) -> None:
    waiting = make_deployments(pg, Kind.profile, count=3)
    [done] = make_deployments(pg, Kind.profile)
    force_status(pg, done, Status.completed)

    actors.cancel.send([*waiting, done])
    _settle(app)

    assert [status_of(pg, d) for d in waiting] == [Status.cancelled] * 3
    assert status_of(pg, done) is Status.completed, "a finished deployment is not cancelled"


def test_retry_through_the_actor_requeues_afresh_and_enqueues(
    pg: Engine, app: App, actors: Actors, make_deployments: MakeDeployments
) -> None:
    failed = make_deployments(pg, Kind.app, count=2)
    for deployment_id in failed:
        force_status(pg, deployment_id, Status.failed)

    actors.retry.send(failed)
    _settle(app)

    with Session(pg) as s:
        rows = [get_deployment(s, deployment_id=d) for d in failed]
    assert all(d is not None and d.status is Status.queued for d in rows)
    assert all(d is not None and d.enqueued_at is not None for d in rows), "sent to dispatch after the commit"
    assert all(d is not None and d.hold_reason == "no APNs credential" for d in rows), "and dispatched"
    assert [e.to_status for e in events_of(pg, failed[0])] == [Status.queued]


def test_every_actor_declares_its_retries_expected_errors_and_time_limit() -> None:
    """Dramatiq's defaults (20 retries over up to a week, 10 minutes a message) fit no actor of mdmq: each
    says how often it is tried again, which errors it expects, and how long it may take."""
    app = App(Settings(database_url="sqlite://", broker_url="stub://"))
    try:
        actors = declare_actors(app)
        declared = {name: app.broker.get_actor(name).options for name in app.broker.get_declared_actors()}
    finally:
        app.close()

    assert set(declared) == {
        "dispatch_urgent",
        "dispatch_bulk",
        "dispatch_paced",
        "record_dispatch",
        "record_report",
        "cancel",
        "retry",
    }
    assert actors.record_dispatch.actor_name == "record_dispatch"
    for name, options in declared.items():
        assert isinstance(options.get("max_retries"), int), name
        assert 0 < options.get("min_backoff", 0) <= options.get("max_backoff", 0), name
        throws = options.get("throws")
        assert isinstance(throws, tuple), name
        assert throws, name
        assert all(issubclass(t, Exception) for t in throws), name
        assert isinstance(options.get("time_limit"), int), name
        assert options["time_limit"] > 0, name
    for name in ("dispatch_urgent", "dispatch_bulk", "dispatch_paced"):
        assert declared[name]["time_limit"] > SEND_TIMEOUT_S * 1000, "a send may take its whole timeout"


def test_each_lanes_tokens_go_on_a_queue_of_their_own_never_the_urgent_one() -> None:
    """A lock is never behind a paced rollout's tokens on the broker (first in, first out there), nor its
    delayed retry behind their delayed ones: the paced lane's tokens have a queue of their own."""
    app = App(Settings(database_url="sqlite://", broker_url="stub://"))
    try:
        actors = declare_actors(app)
        actors.send_token(FairLaneName.paced)
        actors.send_token(FairLaneName.paced, delay_s=30.0)
        actors.send_token(FairLaneName.bulk)
        queues = app.broker.queues
        sizes = {q: queues[q].qsize() if q in queues else 0 for q in queues}
    finally:
        app.close()

    assert sizes[PACED_QUEUE] == 1
    assert sizes[f"{PACED_QUEUE}.DQ"] == 1
    assert sizes[BULK_QUEUE] == 1
    assert sizes.get(URGENT_QUEUE, 0) == 0
    assert sizes.get(f"{URGENT_QUEUE}.DQ", 0) == 0
