"""A scheduler job run: only under the lease, recorded in `scheduler_run`, with a Sentry cron check-in when
Sentry is configured (captured here by a test transport)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sentry_sdk
from sqlmodel import Session, select

from config.settings import Settings
from models.enums import Platform
from models.migrations.runner import upgrade
from models.statuses import Kind
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.tables import Deployment, SchedulerRun
from models.types import utcnow
from scheduler.jobs import Job, relay_job
from scheduler.lease import Lease
from scheduler.runner import STANDBY_REPORT_S, Scheduler
from tests.helpers import free_ports
from tests.sentry import Captured
from workers.actors import Actors
from workers.app import App


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[Scheduler]:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    upgrade(url)
    app = App(Settings(database_url=url, broker_url="stub://"))
    yield Scheduler(app, lease=Lease(app.session, holder="here", period_s=15))
    app.close()


def _fine(actors: Actors, now: datetime) -> int:
    return 7


def _broken(actors: Actors, now: datetime) -> int:
    raise RuntimeError("the database went away")


def test_a_run_is_recorded_with_its_cron_check_ins_and_only_under_the_lease(
    scheduler: Scheduler, sentry: Captured
) -> None:
    fine, broken = Job("fine", _fine, lambda a: 1.0), Job("broken", _broken, lambda a: 1.0)
    assert scheduler.run_job(fine) is False, "not leading yet: nothing runs"

    assert scheduler.lease.refresh() is True
    assert scheduler.run_job(fine) is True
    assert scheduler.run_job(broken) is True, "a failing job is recorded, not raised"
    sentry_sdk.flush()

    with Session(scheduler.app.engine) as s:
        runs = {r.job: r for r in s.exec(select(SchedulerRun))}
    assert (runs["fine"].ok, runs["fine"].work, runs["fine"].holder) == (True, 7, "here")
    assert runs["broken"].ok is False
    assert runs["broken"].error == "RuntimeError: the database went away"
    seen = [(c["monitor_slug"], c["status"]) for c in sentry.check_ins]
    assert seen == [
        ("mdmq-scheduler-fine", "in_progress"),
        ("mdmq-scheduler-fine", "ok"),
        ("mdmq-scheduler-broken", "in_progress"),
        ("mdmq-scheduler-broken", "error"),
    ]


def test_each_run_is_logged_at_info_with_its_outcome_work_and_duration(
    scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.runner")
    assert scheduler.lease.refresh() is True
    scheduler.run_job(Job("fine", _fine, lambda a: 1.0))
    scheduler.run_job(Job("broken", _broken, lambda a: 1.0))

    runs = [r for r in caplog.records if hasattr(r, "scheduler_job") and r.levelno == logging.INFO]
    seen = [(r.__dict__["scheduler_job"], r.__dict__["outcome"], r.__dict__["work"]) for r in runs]
    assert seen == [("fine", "ok", 7), ("broken", "error", None)]
    assert all(isinstance(r.__dict__["duration_ms"], int) for r in runs)
    assert runs[0].getMessage().startswith("scheduler job fine ok: 7 rows in ")


def test_a_standby_says_who_leads_at_once_and_then_every_five_minutes(
    scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.runner")
    now = [1_000.0]
    other = App(scheduler.app.settings)  # the standby is another process on the same database
    standby = Scheduler(other, lease=Lease(other.session, holder="there", period_s=15), clock=lambda: now[0])
    assert scheduler.lease.refresh() is True

    def said() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.__dict__.get("state") == "standby"]

    standby.refresh_lease()
    (line,) = said()
    assert (line.__dict__["leader"], line.levelno) == ("here", logging.INFO)
    assert line.getMessage().startswith("scheduler there standing by: here leads, its lease expires at ")
    now[0] += STANDBY_REPORT_S - 1
    standby.refresh_lease()
    assert len(said()) == 1, "not again within five minutes"
    now[0] += 1
    standby.refresh_lease()
    assert len(said()) == 2, "again after five minutes"
    assert STANDBY_REPORT_S == 300
    other.close()


def test_a_sweep_with_the_broker_away_says_so_in_one_line_and_leaves_its_rows_for_the_next_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'away.db'}"
    upgrade(url)
    [port] = free_ports(1)  # nobody listens there: every send fails as with a broker down
    app = App(Settings(database_url=url, broker_url=f"redis://127.0.0.1:{port}/0"))
    try:
        with app.session() as s:
            ensure_organization(s, organization_id="acme")
            [device] = add_devices(
                s, organization_id="acme", devices=[NewDevice(Platform.ios, "a" * 64, "m")]
            )
            long_ago = utcnow() - timedelta(hours=1)  # committed, never enqueued: the relay's
            [deployment] = create_deployments(
                s, organization_id="acme", deployments=[NewDeployment(device, Kind.profile)], now=long_ago
            )
        scheduler = Scheduler(app, lease=Lease(app.session, holder="here", period_s=15))
        assert scheduler.lease.refresh() is True
        with caplog.at_level(logging.WARNING):
            assert scheduler.run_job(Job("relay", relay_job, lambda a: 1.0)) is True

        [line] = [r for r in caplog.records if r.name == "scheduler.runner"]
        assert line.exc_info is None, "no traceback for a broker that is away"
        assert "the broker is away" in line.getMessage()
        with Session(app.engine) as s:
            [run] = s.exec(select(SchedulerRun))
            row = s.get(Deployment, deployment)
        assert run.ok is False
        assert (run.error or "").startswith("BrokerAway")
        assert row is not None
        assert row.enqueued_at is None, "left for the next run"
    finally:
        app.close()
