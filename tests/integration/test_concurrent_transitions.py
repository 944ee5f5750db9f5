"""On real PostgreSQL: two threads transitioning the same deployment at once — exactly one wins, one event."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.enums import Actor
from models.reports import Report
from models.statuses import Kind, Status
from models.store import Move, TransitionResult, transition
from models.store.sweeps import clear_repush
from models.tables import Deployment, table_of
from models.types import utcnow
from tests.conftest import MakeDeployments
from tests.helpers import events_of, status_of

DEPLOYMENT = table_of(Deployment)


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
    """A locking `id IN (SELECT … FOR UPDATE)` can be planned as a nested loop that locks again for every row
    when the statistics say few rows match. Statistics as stale here, the store's UPDATE (the re-push
    sweep's, as it runs) must still take its locks in one pass."""
    ids = make_deployments(pg, Kind.profile, count=300)
    with pg.begin() as connection:  # ANALYZE sees no row Queued; then every one is
        connection.execute(sa.update(DEPLOYMENT).values(status=Status.failed.value))
        connection.exec_driver_sql("ANALYZE deployment")
        connection.execute(sa.update(DEPLOYMENT).values(status=Status.queued.value))
    update = _statement_of(
        pg, "UPDATE deployment", lambda s: clear_repush(s, ids=ids, now=utcnow(), redeliver_at=utcnow())
    )
    with Session(pg) as session:  # rolled back as it closes
        explained = session.connection().exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + update[0], update[1]
        )
        plan = explained.scalar_one()[0]["Plan"]
        updated = session.connection().execute(
            sa.select(sa.func.count()).where(DEPLOYMENT.c.id.in_(ids), DEPLOYMENT.c.enqueued_at.is_not(None))
        )
        assert updated.scalar_one() == 300
    assert _lock_passes(plan) == [1]


def _statement_of(engine: Engine, starts: str, call: Callable[[Session], object]) -> tuple[str, Any]:
    """The SQL and parameters of the statement starting with `starts` that `call` runs (rolled back)."""
    seen: list[tuple[str, Any]] = []

    def capture(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool
    ) -> None:
        if statement.startswith(starts):
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with Session(engine) as session:  # rolled back as it closes
            call(session)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    [found] = seen
    return found
