"""Pushes the providers did not accept: written with a chunk's answers, read with a deployment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Session, col, select

from models.enums import Provider
from models.store._sql import dialect_of, run
from models.tables import PushAttempt, table_of

ATTEMPT = table_of(PushAttempt)
# How many of a deployment's failed pushes its answer shows, newest first.
ATTEMPTS_SHOWN = 20


@dataclass(frozen=True)
class FailedPush:
    """One provider answer that woke nobody, for the deployments the push was to wake: its scope
    (`outcome`), HTTP status and reason, and when they go again (None: they do not)."""

    deployment_ids: tuple[str, ...]
    provider: Provider
    outcome: str
    status: int | None
    reason: str | None
    next_attempt_at: datetime | None


def record_failed_pushes(session: Session, *, at: datetime, failed: Sequence[FailedPush]) -> None:
    """One row per deployment and claim (`at`), in one statement; a row written before (a record-only
    message delivered twice) stays as it was."""
    rows = [
        {
            "deployment_id": deployment_id,
            "at": at,
            "provider": f.provider.value,
            "outcome": f.outcome,
            "status": f.status,
            "reason": f.reason[:200] if f.reason else None,
            "next_attempt_at": f.next_attempt_at,
        }
        for f in failed
        for deployment_id in f.deployment_ids
    ]
    if not rows:
        return
    if dialect_of(session) != "postgresql":
        run(session, sqlite.insert(ATTEMPT).values(rows).on_conflict_do_nothing())
        return
    # From arrays, a parameter per column, as the receipts: a VALUES list of a chunk's rows would be
    # thousands of parameters, parsed anew each time.
    arrays = [
        sa.bindparam(None, [row[name] for row in rows], type_=ARRAY(ATTEMPT.c[name].type))
        for name in _COLUMNS
    ]
    given = sa.func.unnest(*arrays).table_valued(*_COLUMNS).render_derived()
    statement = postgresql.insert(ATTEMPT).from_select(_COLUMNS, sa.select(*(given.c[n] for n in _COLUMNS)))
    run(session, statement.on_conflict_do_nothing())


_COLUMNS = ["deployment_id", "at", "provider", "outcome", "status", "reason", "next_attempt_at"]


def push_attempts(session: Session, *, deployment_id: str, limit: int = ATTEMPTS_SHOWN) -> list[PushAttempt]:
    """The deployment's failed pushes, newest first, at most `limit`."""
    statement = (
        select(PushAttempt)
        .where(PushAttempt.deployment_id == deployment_id)
        .order_by(col(PushAttempt.at).desc())
        .limit(limit)
    )
    return list(session.exec(statement))


def delete_attempts(session: Session, *, deployment_ids: Sequence[str]) -> None:
    """The failed pushes of these deployments, for the retention purge that deletes them."""
    run(session, sa.delete(ATTEMPT).where(ATTEMPT.c.deployment_id.in_(deployment_ids)))
