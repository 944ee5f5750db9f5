"""Rollouts: the deployments of one create request, followed together. A rollout's progress is counted from
its deployments' rows (one indexed GROUP BY), never kept in counters that a worker would have to update."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from models.ids import new_id
from models.statuses import TERMINAL, Kind, Status
from models.store._sql import DEPLOYMENT, run
from models.store.deployments import NewDeployment
from models.tables import Rollout
from models.types import utcnow

MIXED = "mixed"


def create_rollout(
    session: Session,
    *,
    organization_id: str,
    deployments: Sequence[NewDeployment],
    created_by: str | None = None,
    now: datetime | None = None,
) -> str:
    """A rollout for `deployments`, which the caller creates next with its id (`create_deployments`), in the
    same transaction; its id."""
    kinds = {d.kind for d in deployments}
    rollout_id = new_id()
    session.add(
        Rollout(
            id=rollout_id,
            organization_id=organization_id,
            created_by=created_by,
            total=len(deployments),
            kind=kinds.pop().value if len(kinds) == 1 else MIXED,
            created_at=now or utcnow(),
        )
    )
    session.flush()
    return rollout_id


@dataclass(frozen=True)
class RolloutProgress:
    """A rollout and where its deployments stand: counts per status, how many have ended, their pushes."""

    rollout: Rollout
    counts: dict[Status, int] = field(default_factory=dict)
    finished: int = 0  # in a terminal status of its kind
    pushed: int = 0  # a push sent at least once
    held: int = 0  # waiting on a hold (organization, credential, token)
    first_push_at: datetime | None = None
    last_push_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.finished >= self.rollout.total


def get_rollout(session: Session, *, rollout_id: str) -> Rollout | None:
    return session.get(Rollout, rollout_id)


def rollout_progress(session: Session, *, rollouts: Sequence[Rollout]) -> list[RolloutProgress]:
    """The progress of each of `rollouts`, in the order given: one statement for them all."""
    if not rollouts:
        return []
    c = DEPLOYMENT.c
    statement = (
        sa.select(
            c.rollout_id,
            c.kind,
            c.status,
            sa.func.count().label("n"),
            sa.func.count(c.pushed_at).label("pushed"),
            sa.func.count(c.hold_reason).label("held"),
            sa.func.min(c.pushed_at).label("first_push"),
            sa.func.max(c.pushed_at).label("last_push"),
        )
        .where(c.rollout_id.in_([r.id for r in rollouts]))
        .group_by(c.rollout_id, c.kind, c.status)
    )
    rows: dict[str, list[sa.Row[tuple[object, ...]]]] = {r.id: [] for r in rollouts}
    for row in run(session, statement):
        rows[row.rollout_id].append(row)
    return [_progress(r, rows[r.id]) for r in rollouts]


def _progress(rollout: Rollout, rows: Sequence[sa.Row[tuple[object, ...]]]) -> RolloutProgress:
    counts: dict[Status, int] = {}
    finished = pushed = held = 0
    first: datetime | None = None
    last: datetime | None = None
    for row in rows:
        status, n = Status(row.status), int(row.n)
        counts[status] = counts.get(status, 0) + n
        if status in TERMINAL[Kind(row.kind)]:
            finished += n
        pushed += int(row.pushed)
        held += int(row.held)
        if row.first_push is not None and (first is None or row.first_push < first):
            first = row.first_push
        if row.last_push is not None and (last is None or row.last_push > last):
            last = row.last_push
    return RolloutProgress(rollout, counts, finished, pushed, held, first, last)


def recent_rollouts(
    session: Session, *, organization_id: str | None, after: str | None = None, limit: int = 100
) -> list[Rollout]:
    """Newest first, those older than the cursor `after`; `organization_id` None: every organization's."""
    statement = select(Rollout)
    if organization_id is not None:
        statement = statement.where(Rollout.organization_id == organization_id)
    if after is not None:
        statement = statement.where(col(Rollout.id) < after)
    return list(session.exec(statement.order_by(col(Rollout.id).desc()).limit(limit)))


def running_rollouts(session: Session, *, since: datetime, limit: int = 50) -> list[RolloutProgress]:
    """Every organization's rollouts created since `since` with deployments still to end, newest first."""
    statement = (
        select(Rollout)
        .where(col(Rollout.created_at) >= since)
        .order_by(col(Rollout.id).desc())
        .limit(limit * 4)
    )
    progress = rollout_progress(session, rollouts=list(session.exec(statement)))
    return [p for p in progress if not p.done][:limit]
