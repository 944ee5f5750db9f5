"""Rollouts in the store and the operations on them: progress counted the same on PostgreSQL and SQLite, and
a cancel or retry of a whole rollout in chunks, each chunk's transaction committed before the next."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.statuses import Kind, Status
from models.store.organizations import set_fair_share
from models.store.rollouts import (
    count_rollouts,
    get_rollout,
    purge_empty_rollouts,
    rollout_progress,
    running_rollouts,
)
from models.tables import Deployment
from models.types import utcnow
from tests.conftest import MakeRollout
from tests.helpers import force_status, sessions, status_of
from workers.services.operations import cancel_rollout, retry_rollout

DEPLOYMENT = Deployment.__table__  # type: ignore[attr-defined]


@pytest.mark.parametrize("database", ["pg", "sqlite"])
def test_progress_parts_the_deployments_by_push_state_on_either_database(
    database: str, request: pytest.FixtureRequest, make_rollout: MakeRollout
) -> None:
    engine: Engine = request.getfixturevalue(database)
    rollout_id, (woken, again, held, fresh) = make_rollout(engine, Kind.app, count=4)
    now = utcnow()
    with engine.begin() as connection:
        for deployment_id, values in (
            (
                woken,
                {
                    "pushed_at": now - timedelta(seconds=10),
                    "enqueued_at": now - timedelta(seconds=11),
                    "attempt_count": 1,
                },
            ),
            # Pushed, no check-in: the re-push sweep enqueued it again, not pushed since.
            (again, {"pushed_at": now - timedelta(minutes=20), "enqueued_at": now, "attempt_count": 1}),
            (held, {"hold_reason": "FCM service account refused"}),
        ):
            where = DEPLOYMENT.c.id == deployment_id
            connection.execute(sa.update(DEPLOYMENT).where(where).values(**values))

    with Session(engine) as s:
        rollout = get_rollout(s, rollout_id=rollout_id)
        assert rollout is not None
        [p] = rollout_progress(s, rollouts=[rollout], now=now)
        assert (count_rollouts(s, organization_id="acme"), count_rollouts(s, organization_id=None)) == (1, 1)
        assert [r.rollout.id for r in running_rollouts(s, since=now - timedelta(hours=1))] == [rollout_id]

    assert (p.never_pushed, p.pushed, p.retrying, p.held) == (1, 1, 1, 1)
    assert dict(p.held_reasons) == {"FCM service account refused": 1}
    assert (p.recent_pushes, p.to_push) == (1, 2)
    # The first push 20 minutes ago: one push in the last minute is 1 per 60 s, and two to push 120 s.
    assert p.rate_per_s == pytest.approx(1 / 60)
    assert p.eta_s == pytest.approx(120)
    assert fresh != woken


def test_a_paced_organization_s_eta_is_at_least_what_is_left_over_its_rate(
    pg: Engine, make_rollout: MakeRollout
) -> None:
    rollout_id, ids = make_rollout(pg, Kind.profile, count=100)
    now = utcnow()
    with Session(pg) as s, s.begin():
        set_fair_share(s, organization_id="acme", wake_rate_per_s=0.5)
        rollout = get_rollout(s, rollout_id=rollout_id)
        assert rollout is not None
        [before] = rollout_progress(s, rollouts=[rollout], now=now)
    # The first 40 went out in a burst a second ago, faster than the rate (it was just set).
    with pg.begin() as connection:
        pushed = {"pushed_at": now - timedelta(seconds=1), "enqueued_at": now - timedelta(seconds=2)}
        connection.execute(sa.update(DEPLOYMENT).where(DEPLOYMENT.c.id.in_(ids[:40])).values(**pushed))
    with Session(pg) as s:
        again = get_rollout(s, rollout_id=rollout_id)
        assert again is not None
        [after] = rollout_progress(s, rollouts=[again], now=now)

    assert before.rate_per_s is None
    assert before.eta_s == pytest.approx(100 / 0.5), "paced: known before the first push"
    assert after.rate_per_s == pytest.approx(40)
    assert after.eta_s == pytest.approx(60 / 0.5), "the rate it will be held to, not the burst's"


def test_cancel_and_retry_of_a_rollout_go_chunk_by_chunk_and_miss_none(
    pg: Engine, make_rollout: MakeRollout
) -> None:
    rollout_id, ids = make_rollout(pg, Kind.profile, count=7)
    other_rollout, others = make_rollout(pg, Kind.profile, count=2)
    for deployment_id in ids[:5]:
        force_status(pg, deployment_id, Status.failed)

    retried = list(retry_rollout(sessions(pg), rollout_id=rollout_id, chunk=2))
    assert [len(r.applied) for r in retried] == [2, 2, 1]
    assert {status_of(pg, i) for i in ids} == {Status.queued}

    cancelled = list(cancel_rollout(sessions(pg), rollout_id=rollout_id, chunk=3))
    assert [len(r.applied) for r in cancelled] == [3, 3, 1]
    assert {status_of(pg, i) for i in ids} == {Status.cancelled}
    assert {status_of(pg, i) for i in others} == {Status.queued}, "another rollout's are left alone"
    assert other_rollout != rollout_id


@pytest.mark.parametrize("database", ["pg", "sqlite"])
def test_a_rollout_goes_with_its_last_deployment_and_not_before(
    database: str, request: pytest.FixtureRequest, make_rollout: MakeRollout
) -> None:
    engine: Engine = request.getfixturevalue(database)
    emptied, [gone] = make_rollout(engine, Kind.profile)
    kept, _ = make_rollout(engine, Kind.profile)
    with engine.begin() as connection:
        connection.execute(
            sa.delete(DEPLOYMENT).where(DEPLOYMENT.c.id == gone)
        )  # as the retention purge does

    with Session(engine) as s, s.begin():
        assert purge_empty_rollouts(s, created_before=utcnow() - timedelta(days=1)) == 0, "too young"
        assert purge_empty_rollouts(s, created_before=utcnow() + timedelta(seconds=1)) == 1
    with Session(engine) as s:
        assert get_rollout(s, rollout_id=emptied) is None
        assert get_rollout(s, rollout_id=kept) is not None, "a deployment left: kept"
