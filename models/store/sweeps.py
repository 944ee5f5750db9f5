"""The sweeps' queries: each pages through one index, `limit` rows at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from models.statuses import Kind, Status
from models.store._sql import DEPLOYMENT, IDS_PER_STATEMENT, chunked, one_of, run, update_deployments

c = DEPLOYMENT.c


@dataclass(frozen=True)
class Due:
    id: str
    organization_id: str
    kind: Kind
    attempt_count: int
    created_at: datetime
    urgent: bool = False  # created `urgent`: the urgent lane, as a security action


def _due(statement: sa.Select[tuple[str, str, str, int, datetime, bool]], session: Session) -> list[Due]:
    return [
        Due(r.id, r.organization_id, Kind(r.kind), r.attempt_count, r.created_at, bool(r.urgent))
        for r in run(session, statement)
    ]


def _columns() -> sa.Select[tuple[str, str, str, int, datetime, bool]]:
    return sa.select(c.id, c.organization_id, c.kind, c.attempt_count, c.created_at, c.urgent)


def due_for(session: Session, *, ids: Sequence[str]) -> list[Due]:
    """The deployments `ids` as the sweeps return them: for a caller that released or re-queued them."""
    found: list[Due] = []
    for batch in chunked(list(ids), IDS_PER_STATEMENT):
        found += _due(_columns().where(one_of(session, c.id, batch)), session)
    return found


def due_postponed(session: Session, *, now: datetime, limit: int) -> list[Due]:
    """Postponed and Waiting for startup deployments whose retry time has come."""
    waiting = (Status.postponed.value, Status.waiting_for_startup.value)
    statement = _columns().where(c.status.in_(waiting), c.next_attempt_at <= now).order_by(c.next_attempt_at)
    return _due(statement.limit(limit), session)


def due_repush(session: Session, *, now: datetime, limit: int) -> list[Due]:
    """Queued deployments whose device was woken but has not checked in by their re-push time."""
    statement = _columns().where(
        c.status == Status.queued.value, c.hold_reason.is_(None), c.next_attempt_at <= now
    )
    return _due(statement.order_by(c.next_attempt_at).limit(limit), session)


def never_enqueued(session: Session, *, queued_before: datetime, limit: int) -> list[Due]:
    """Queued deployments committed but never handed to the broker (a crash between commit and enqueue):
    created, re-queued or released before `queued_before`, and not enqueued since."""
    statement = _columns().where(
        c.status == Status.queued.value,
        c.enqueued_at.is_(None),
        c.hold_reason.is_(None),
        c.updated_at <= queued_before,
    )
    return _due(statement.limit(limit), session)


def mark_enqueued(session: Session, *, ids: Sequence[str], now: datetime, redeliver_at: datetime) -> None:
    """Handed to the broker: the relay leaves them alone from now on, and the re-push sweep takes them again
    at `redeliver_at` should the message never be answered (the broker lost it, the worker died). A re-push
    time already ahead (a push answered meanwhile) stands."""
    pending = sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now)
    update_deployments(
        session,
        ids=ids,
        where=sa.and_(c.status == Status.queued.value, sa.or_(c.enqueued_at.is_(None), pending)),
        values={
            "enqueued_at": sa.func.coalesce(c.enqueued_at, now),
            "next_attempt_at": sa.case((pending, redeliver_at), else_=c.next_attempt_at),
        },
    )


def defer_redelivery(session: Session, *, ids: Sequence[str], redeliver_at: datetime) -> None:
    """Enqueued, but booked to go later (a paced organization's chunk in the fair queue): the re-push sweep
    is to take them no sooner than `redeliver_at`, their slot and then the redelivery time. A re-push time
    later already stands; so does a retry time of its own (the deployment is no longer Queued)."""
    pending = sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at < redeliver_at)
    update_deployments(
        session,
        ids=ids,
        where=sa.and_(c.status == Status.queued.value, c.enqueued_at.is_not(None), pending),
        values={"next_attempt_at": redeliver_at},
    )


def unmark_enqueued(session: Session, *, ids: Sequence[str]) -> None:
    """Created as enqueued (`create_deployments(redeliver_after_s=…)`), but their messages never reached the
    broker: the relay is to enqueue them once the broker is back. Only those not claimed since (a message
    that did reach a worker pushed them)."""
    update_deployments(
        session,
        ids=ids,
        where=sa.and_(c.status == Status.queued.value, c.pushed_at.is_(None)),
        values={"enqueued_at": None, "next_attempt_at": None},
    )


def clear_repush(session: Session, *, ids: Sequence[str], now: datetime, redeliver_at: datetime) -> None:
    """Taken by the re-push sweep, enqueued anew (its push counts another wake-up): the next sweep takes them
    again only at `redeliver_at`, should the message it sends be lost (the dispatch that pushes them sets
    the real re-push time). Only while still Queued: a device that reported NotNow since the sweep read the
    row has a retry time of its own, which must stand."""
    update_deployments(
        session,
        ids=ids,
        where=c.status == Status.queued.value,
        values={"enqueued_at": now, "next_attempt_at": redeliver_at},
    )
