"""The scheduler's reads and deletes beyond the sweeps: stuck deployments, and the retention purge."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from models.enums import Provider
from models.statuses import IN_FLIGHT, STATUSES, TERMINAL, Kind, Status
from models.store._sql import DEPLOYMENT, DEVICE, EVENT, lock_deployments, run
from models.store.attempts import delete_attempts

c = DEPLOYMENT.c
RECEIPT = SQLModel.metadata.tables["push_receipt"]

# Where a deployment can stand still without anyone acting: the queue (not held: held ones are counted as
# held), and the statuses between the device fetching a command and answering it.
STUCK_IN: dict[Kind, frozenset[Status]] = {kind: IN_FLIGHT[kind] | {Status.queued} for kind in Kind}
_TERMINAL_VALUES = sorted({status.value for statuses in TERMINAL.values() for status in statuses})


def stuck_counts(session: Session, *, unchanged_since: datetime) -> dict[tuple[Kind, Status], int]:
    """Deployments per kind and status that have not changed since `unchanged_since`, every stuck-able pair
    included (0 when none), so that a gauge drops back to 0."""
    counts = {(kind, status): 0 for kind, statuses in STUCK_IN.items() for status in statuses}
    fits = sa.or_(
        *(
            sa.and_(c.kind == kind.value, c.status.in_([s.value for s in statuses]))
            for kind, statuses in STUCK_IN.items()
        )
    )
    statement = (
        sa.select(c.kind, c.status, sa.func.count().label("n"))
        .where(fits, c.updated_at < unchanged_since, c.hold_reason.is_(None))
        .group_by(c.kind, c.status)
    )
    for row in run(session, statement).mappings():
        counts[(Kind(row["kind"]), Status(row["status"]))] = int(row["n"])
    return counts


def purge_finished(session: Session, *, finished_before: datetime, limit: int) -> int:
    """Delete up to `limit` deployments that ended before `finished_before`, their events and failed pushes;
    returns how many. Ops retry clears `finished_at`, so a deployment brought back is never purged."""
    ids = list(
        run(
            session,
            sa.select(c.id)
            .where(c.finished_at < finished_before, c.status.in_(_TERMINAL_VALUES))
            .order_by(c.finished_at)
            .limit(limit),
        ).scalars()
    )
    if not ids:
        return 0
    # Locked in id order, then read again: an operator's retry between the read and the delete keeps the
    # deployment, and its history with it.
    lock_deployments(session, ids=ids)
    still = sa.select(c.id).where(
        c.id.in_(ids), c.finished_at < finished_before, c.status.in_(_TERMINAL_VALUES)
    )
    ids = list(run(session, still).scalars())
    if not ids:
        return 0
    run(session, sa.delete(EVENT).where(EVENT.c.deployment_id.in_(ids)))
    delete_attempts(session, deployment_ids=ids)
    return int(run(session, sa.delete(DEPLOYMENT).where(c.id.in_(ids))).rowcount)


def status_counts(session: Session) -> dict[tuple[Kind, Status], int]:
    """Deployments per kind and status, every status of every kind included (0 when none): one aggregate
    over the table, which the retention purge keeps to its window."""
    counts = {(kind, status): 0 for kind, statuses in STATUSES.items() for status in statuses}
    statement = sa.select(c.kind, c.status, sa.func.count().label("n")).group_by(c.kind, c.status)
    for row in run(session, statement).mappings():
        counts[(Kind(row["kind"]), Status(row["status"]))] = int(row["n"])
    return counts


def held_counts(session: Session) -> dict[tuple[Provider, str], int]:
    """Held deployments per provider (their device's) and hold reason."""
    d = DEVICE.c
    statement = (
        sa.select(d.provider, c.hold_reason, sa.func.count().label("n"))
        .select_from(DEPLOYMENT.join(DEVICE, d.id == c.device_id))
        .where(c.hold_reason.is_not(None))
        .group_by(d.provider, c.hold_reason)
    )
    return {
        (Provider(r["provider"]), r["hold_reason"]): int(r["n"]) for r in run(session, statement).mappings()
    }


def pending_devices(session: Session, *, now: datetime) -> dict[Provider, int]:
    """Devices still pending on pushes that have not expired, per provider (only AOSP reports them)."""
    r = RECEIPT.c
    statement = (
        sa.select(r.provider, sa.func.sum(r.pending_devices).label("n"))
        .where(r.pending_devices > 0, sa.or_(r.expires_at.is_(None), r.expires_at > now))
        .group_by(r.provider)
    )
    counts = dict.fromkeys(Provider, 0)
    for row in run(session, statement).mappings():
        counts[Provider(row["provider"])] = int(row["n"] or 0)
    return counts
