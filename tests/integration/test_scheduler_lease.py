"""The leader lease on SQLite and PostgreSQL: one holder at a time, takeover once it expired, a leader that
learns it lost the row stops at once, and a job runs only under a confirmed lease."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.tables import SchedulerLease, table_of
from models.types import utcnow
from scheduler.lease import Lease
from tests.helpers import sessions

LEASE = table_of(SchedulerLease)


def _expire(engine: Engine) -> None:
    """Time passes for the row: it expired a moment ago (the database's view; no process clock moves)."""
    with engine.begin() as connection:
        connection.execute(sa.update(LEASE).values(expires_at=utcnow() - timedelta(seconds=1)))


def _holder(engine: Engine) -> str:
    with engine.connect() as connection:
        return str(connection.execute(sa.select(LEASE.c.holder)).scalar_one())


def test_one_holder_at_a_time_and_a_standby_takes_over_once_it_expired(engine: Engine) -> None:
    first = Lease(sessions(engine), holder="first", period_s=15)
    second = Lease(sessions(engine), holder="second", period_s=15)

    assert first.refresh() is True
    assert second.refresh() is False
    assert first.refresh() is True, "the holder renews"
    assert (first.leading(), second.leading(), _holder(engine)) == (True, False, "first")

    _expire(engine)
    assert second.refresh() is True
    assert _holder(engine) == "second"
    assert first.leading() is True, "by its own count it still leads, until it asks again"
    assert first.refresh() is False
    assert first.leading() is False, "it learned it lost the row: it stops at once"


def test_a_leader_that_cannot_renew_stops_on_its_own_before_the_row_expires(engine: Engine) -> None:
    now = [1_000.0]
    lease = Lease(sessions(engine), holder="only", period_s=15, clock=lambda: now[0])
    assert lease.refresh() is True

    now[0] += lease.ttl_s - lease.margin_s - 0.01
    assert lease.leading() is True
    now[0] += 0.02  # no renewal came through: its row has a sixth of a period left, it stops now
    assert lease.leading() is False


def test_a_job_runs_only_where_the_row_still_names_its_holder(engine: Engine) -> None:
    first = Lease(sessions(engine), holder="first", period_s=15)
    second = Lease(sessions(engine), holder="second", period_s=15)
    assert first.refresh() is True
    with Session(engine) as s:
        assert first.confirm(s, utcnow()) is True
        assert second.confirm(s, utcnow()) is False

    _expire(engine)
    with Session(engine) as s:
        assert first.confirm(s, utcnow()) is False, "a paused leader whose row expired runs nothing"


def test_a_released_lease_is_taken_at_the_next_ask(engine: Engine) -> None:
    first = Lease(sessions(engine), holder="first", period_s=15)
    second = Lease(sessions(engine), holder="second", period_s=15)
    assert first.refresh() is True
    first.release()
    assert first.leading() is False
    assert second.refresh() is True
