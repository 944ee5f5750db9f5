"""Rollouts: the deployments of one create request, followed together. A rollout's progress is counted from
its deployments' rows (one indexed GROUP BY), never kept in counters that a worker would have to update."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from models.ids import new_id
from models.statuses import TERMINAL, Kind, Status
from models.store._sql import DEPLOYMENT, run
from models.store.deployments import NewDeployment
from models.tables import Organization, Rollout
from models.types import utcnow

MIXED = "mixed"
RATE_WINDOW_S = 60.0  # the recent pushes a rollout's rate counts


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
    """A rollout and where its deployments stand: counts per status, how many have ended, their pushes.

    Push state parts the deployments: `held` (with `held_reasons`), `retrying` (Queued, pushed before and
    enqueued again without a push since), `pushed` (the others with a push sent), `never_pushed` (the rest).
    """

    rollout: Rollout
    counts: dict[Status, int] = field(default_factory=dict)
    finished: int = 0  # in a terminal status of its kind
    pushed: int = 0  # a push sent, and not waiting to be pushed again
    held: int = 0  # waiting on a hold (organization, credential, token)
    first_push_at: datetime | None = None
    last_push_at: datetime | None = None
    retrying: int = 0
    never_pushed: int = 0
    held_reasons: Mapping[str, int] = field(default_factory=dict)
    pushed_and_queued: int = 0  # of `pushed`, those still Queued: waiting for the device to check in
    recent_pushes: int = 0  # pushed in the `RATE_WINDOW_S` before `measured_at`
    measured_at: datetime | None = None
    paced_per_s: float | None = None  # the organization's wake-up rate, which bulk pushes never exceed

    @property
    def done(self) -> bool:
        return self.finished >= self.rollout.total

    @property
    def to_push(self) -> int:
        """Deployments still to push that nothing holds: never pushed or waiting to go again, not ended."""
        return self.counts.get(Status.queued, 0) - self.held - self.pushed_and_queued

    @property
    def rate_per_s(self) -> float | None:
        """Deployments pushed per second over the last `RATE_WINDOW_S`, or since the first push when that
        was more recent (at least a second); None before the first push."""
        if self.first_push_at is None or self.measured_at is None:
            return None
        since_first_s = (self.measured_at - self.first_push_at).total_seconds()
        return self.recent_pushes / min(RATE_WINDOW_S, max(since_first_s, 1.0))

    @property
    def eta_s(self) -> float | None:
        """Seconds until every deployment not held is pushed, at `rate_per_s`, or at the organization's
        wake-up rate when it is paced and that is slower (or nothing was pushed yet): 0 when none is left to
        push, None when the rate is unknown or 0 (nothing pushed in the window) and it is not paced."""
        if self.to_push <= 0:
            return 0.0
        rates = [r for r in (self.rate_per_s, self.paced_per_s) if r]
        return self.to_push / min(rates) if rates else None


def get_rollout(session: Session, *, rollout_id: str) -> Rollout | None:
    return session.get(Rollout, rollout_id)


def rollout_progress(
    session: Session, *, rollouts: Sequence[Rollout], now: datetime | None = None
) -> list[RolloutProgress]:
    """The progress of each of `rollouts`, in the order given, measured `now`: one statement for them all."""
    if not rollouts:
        return []
    now = now or utcnow()
    c = DEPLOYMENT.c
    queued = c.status == Status.queued.value
    not_held = c.hold_reason.is_(None)
    # As `claim_for_push` counts a wake-up: not pushed since it was last enqueued, though pushed before.
    not_pushed_since_enqueued = sa.or_(
        c.pushed_at.is_(None), c.enqueued_at.is_(None), c.pushed_at < c.enqueued_at
    )
    retrying = sa.and_(queued, not_held, c.attempt_count > 0, not_pushed_since_enqueued)
    statement = (
        sa.select(
            c.rollout_id,
            c.kind,
            c.status,
            c.hold_reason,
            sa.func.count().label("n"),
            sa.func.count(c.pushed_at).label("pushed"),
            _count_where(retrying).label("retrying"),
            _count_where(sa.and_(retrying, c.pushed_at.is_not(None))).label("retrying_pushed"),
            _count_where(c.pushed_at >= now - timedelta(seconds=RATE_WINDOW_S)).label("recent"),
            sa.func.min(c.pushed_at).label("first_push"),
            sa.func.max(c.pushed_at).label("last_push"),
        )
        .where(c.rollout_id.in_([r.id for r in rollouts]))
        .group_by(c.rollout_id, c.kind, c.status, c.hold_reason)
    )
    rows: dict[str, list[sa.Row[tuple[object, ...]]]] = {r.id: [] for r in rollouts}
    for row in run(session, statement):
        rows[row.rollout_id].append(row)
    paced = _paced(session, {r.organization_id for r in rollouts})
    return [
        replace(_progress(r, rows[r.id], now), paced_per_s=paced.get(r.organization_id)) for r in rollouts
    ]


def _paced(session: Session, organization_ids: set[str]) -> dict[str, float | None]:
    statement = select(Organization.id, Organization.wake_rate_per_s).where(
        col(Organization.id).in_(organization_ids)
    )
    return dict(session.exec(statement).all())


def _count_where(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.func.count(sa.case((condition, 1)))


def _progress(rollout: Rollout, rows: Sequence[sa.Row[tuple[object, ...]]], now: datetime) -> RolloutProgress:
    counts: dict[Status, int] = {}
    held_reasons: dict[str, int] = {}
    finished = pushed = retrying = never_pushed = recent = pushed_and_queued = 0
    first: datetime | None = None
    last: datetime | None = None
    for row in rows:
        status, n = Status(row.status), int(row.n)
        counts[status] = counts.get(status, 0) + n
        if status in TERMINAL[Kind(row.kind)]:
            finished += n
        if row.hold_reason is not None:
            held_reasons[row.hold_reason] = held_reasons.get(row.hold_reason, 0) + n
            continue  # held: whatever its pushes before, it waits on the hold now
        retrying += int(row.retrying)
        row_pushed = int(row.pushed) - int(row.retrying_pushed)
        pushed += row_pushed
        never_pushed += n - row_pushed - int(row.retrying)
        if status is Status.queued:
            pushed_and_queued += row_pushed
        recent += int(row.recent)
        if row.first_push is not None and (first is None or row.first_push < first):
            first = row.first_push
        if row.last_push is not None and (last is None or row.last_push > last):
            last = row.last_push
    held = sum(held_reasons.values())
    return RolloutProgress(
        rollout,
        counts,
        finished=finished,
        pushed=pushed,
        held=held,
        first_push_at=first,
        last_push_at=last,
        retrying=retrying,
        never_pushed=never_pushed,
        held_reasons=held_reasons,
        recent_pushes=recent,
        measured_at=now,
        pushed_and_queued=pushed_and_queued,
    )


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


def count_rollouts(session: Session, *, organization_id: str | None) -> int:
    """How many rollouts `recent_rollouts` pages through: the organization's, or every organization's."""
    statement = sa.select(sa.func.count()).select_from(Rollout)
    if organization_id is not None:
        statement = statement.where(col(Rollout.organization_id) == organization_id)
    return int(run(session, statement).scalar_one())


def rollout_deployment_ids(
    session: Session,
    *,
    rollout_id: str,
    statuses: Mapping[Kind, frozenset[Status]],
    after: str | None = None,
    limit: int,
) -> list[str]:
    """Up to `limit` of the rollout's deployments in one of `statuses` for their kind, in id order past the
    cursor `after`: the next chunk of a cancel or a retry of the whole rollout."""
    c = DEPLOYMENT.c
    in_status = sa.or_(
        *(
            sa.and_(c.kind == kind.value, c.status.in_([s.value for s in wanted]))
            for kind, wanted in statuses.items()
        )
    )
    statement = sa.select(c.id).where(c.rollout_id == rollout_id, in_status)
    if after is not None:
        statement = statement.where(c.id > after)
    return list(run(session, statement.order_by(c.id).limit(limit)).scalars())


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


def purge_empty_rollouts(session: Session, *, created_before: datetime) -> int:
    """Delete the rollouts created before `created_before` whose deployments the retention purge has all
    deleted; returns how many. One with a deployment left, or younger, stays."""
    c = DEPLOYMENT.c
    rollout = Rollout.__table__  # type: ignore[attr-defined]
    left = sa.select(c.id).where(c.rollout_id == rollout.c.id).exists()
    statement = sa.delete(rollout).where(rollout.c.created_at < created_before, ~left)
    return int(run(session, statement).rowcount)
