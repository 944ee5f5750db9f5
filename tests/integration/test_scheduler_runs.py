"""A scheduler job run: only under the lease, recorded in `scheduler_run`, with a Sentry cron check-in when
Sentry is configured (captured here by a test transport)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sentry_sdk
from sqlmodel import Session, select

from config.settings import Settings
from models.migrations.runner import upgrade
from models.tables import SchedulerRun
from scheduler.jobs import Job
from scheduler.lease import Lease
from scheduler.runner import Scheduler
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
