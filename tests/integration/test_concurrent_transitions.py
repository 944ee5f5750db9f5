"""On real PostgreSQL: two threads transitioning the same deployment at once — exactly one wins, one event."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.enums import Actor
from models.reports import Report
from models.statuses import Kind, Status
from models.store import Move, TransitionResult, transition
from models.store._sql import DEPLOYMENT, in_id_order, one_of
from tests.conftest import MakeDeployments
from tests.helpers import events_of, status_of


def _wait_until_blocked_on_a_lock(engine: Engine, backend_pid: int, timeout_s: float = 10) -> None:
    """Return once PostgreSQL shows `backend_pid` waiting for a row lock; the test's ordering point."""
    deadline = time.monotonic() + timeout_s
    query = sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid")
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            if connection.execute(query, {"pid": backend_pid}).scalar() == "Lock":
                return
            connection.rollback()  # a fresh snapshot of pg_stat_activity on the next read
    raise AssertionError(f"backend {backend_pid} never blocked on the row lock")


def test_the_second_of_two_overlapping_transitions_is_refused(
    pg: Engine, make_deployments: MakeDeployments
) -> None:
    [deployment_id] = make_deployments(pg, Kind.profile)
    fetched = Move.for_report(Report.fetched)
    second_pid: list[int] = []
    second_result: list[TransitionResult] = []
    second_ready = threading.Event()

    def second() -> None:
        with Session(pg) as session, session.begin():
            second_pid.append(session.connection().execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
            second_ready.set()
            second_result.append(transition(session, ids=[deployment_id], move=fetched, actor=Actor.device))

    with Session(pg) as first, first.begin():
        first_result = transition(first, ids=[deployment_id], move=fetched, actor=Actor.device)
        thread = threading.Thread(target=second)
        thread.start()
        assert second_ready.wait(10)
        _wait_until_blocked_on_a_lock(pg, second_pid[0])
    # The first transaction committed as its block ended; the second now re-reads the row and finds Waiting.
    thread.join(10)

    assert [a.to_status for a in first_result.applied] == [Status.waiting]
    assert second_result[0].applied == ()
    assert second_result[0].refused[0].status is Status.waiting
    assert [(e.from_status, e.to_status) for e in events_of(pg, deployment_id)] == [
        (Status.queued, Status.waiting)
    ]


def test_racing_threads_over_many_deployments_each_win_exactly_once_per_deployment(
    pg: Engine, make_deployments: MakeDeployments
) -> None:
    ids = make_deployments(pg, Kind.profile, count=200)
    barrier = threading.Barrier(2)
    moves = {"acknowledged": Move.for_report(Report.acknowledged), "error": Move.for_report(Report.error)}

    def race(move: Move) -> list[str]:
        won: list[str] = []
        barrier.wait()
        for deployment_id in ids:
            with Session(pg) as session, session.begin():
                result = transition(session, ids=[deployment_id], move=move, actor=Actor.device)
            won += [a.deployment_id for a in result.applied]
        return won

    with ThreadPoolExecutor(2) as pool:
        completed, failed = pool.map(race, moves.values())

    assert sorted(completed + failed) == sorted(ids), "every deployment moved exactly once"
    for deployment_id in ids:
        history = events_of(pg, deployment_id)
        assert len(history) == 1
        expected = Status.completed if deployment_id in set(completed) else Status.failed
        assert history[-1].to_status is expected
        assert status_of(pg, deployment_id) is expected


def _lock_passes(plan: dict[str, Any]) -> list[int]:
    """How many times each LockRows node of an EXPLAIN (ANALYZE, FORMAT JSON) plan ran."""
    loops = [plan["Actual Loops"]] if plan["Node Type"] == "LockRows" else []
    for child in plan.get("Plans", []):
        loops += _lock_passes(child)
    return loops


def test_a_many_row_update_locks_its_rows_in_one_pass_whatever_plan_the_planner_picks(
    pg: Engine, make_deployments: MakeDeployments
) -> None:
    """When its statistics said no row matched, PostgreSQL joined an `id IN (SELECT … FOR UPDATE)` in a
    nested loop that ran the locking SELECT again for every row: n² row locks, 30 s for 5,000 ids, and the
    writers behind it timed out. Statistics as stale here, the locks must still be taken in one pass."""
    ids = make_deployments(pg, Kind.profile, count=300)
    with pg.begin() as connection:  # ANALYZE sees every row pushed once; then none is
        connection.execute(sa.update(DEPLOYMENT).values(attempt_count=1))
        connection.exec_driver_sql("ANALYZE deployment")
        connection.execute(sa.update(DEPLOYMENT).values(attempt_count=0))
    with Session(pg) as session:  # rolled back as it closes
        statement = (
            sa.update(DEPLOYMENT)
            .where(
                in_id_order(
                    session, sa.and_(one_of(session, DEPLOYMENT.c.id, ids), DEPLOYMENT.c.attempt_count == 0)
                )
            )
            .values(attempt_count=DEPLOYMENT.c.attempt_count + 1)
        )
        compiled = statement.compile(dialect=session.get_bind().dialect)
        explained = session.connection().exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + str(compiled), compiled.params
        )
        plan = explained.scalar_one()[0]["Plan"]
        updated = session.connection().execute(
            sa.select(sa.func.count()).where(
                one_of(session, DEPLOYMENT.c.id, ids), DEPLOYMENT.c.attempt_count == 1
            )
        )
        assert updated.scalar_one() == 300
    assert _lock_passes(plan) == [1]
