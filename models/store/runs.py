"""The scheduler's record of its job runs (`scheduler_run`)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from models.store._sql import run

RUNS = SQLModel.metadata.tables["scheduler_run"]


def start_run(session: Session, *, job: str, holder: str, started_at: datetime) -> int:
    """Record that `holder` started `job`; the run's id."""
    statement = sa.insert(RUNS).values(job=job, holder=holder, started_at=started_at).returning(RUNS.c.id)
    return int(run(session, statement).scalar_one())


def finish_run(
    session: Session, *, run_id: int, finished_at: datetime, work: int | None, error: str | None
) -> None:
    """Record how the run ended: ok when there is no `error`; `work` is the rows the job handled."""
    values = {"finished_at": finished_at, "ok": error is None, "work": work, "error": error}
    run(session, sa.update(RUNS).where(RUNS.c.id == run_id).values(**values))


def purge_runs(session: Session, *, started_before: datetime) -> int:
    """Scheduler runs older than `started_before`."""
    return int(run(session, sa.delete(RUNS).where(RUNS.c.started_at < started_before)).rowcount)
