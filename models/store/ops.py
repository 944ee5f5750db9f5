"""The reads only the API and the ops commands make: readiness, ownership, held counts, single rows."""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlmodel import Session

from models.batches import IDS_PER_STATEMENT, chunked
from models.store._sql import DEPLOYMENT, one_of, run
from models.tables import Device, PushReceipt


def ping(session: Session) -> None:
    """One round trip to the database; raises when it does not answer."""
    run(session, sa.text("SELECT 1"))


def own_deployment_ids(session: Session, *, organization_id: str, ids: Collection[str]) -> list[str]:
    """Those of `ids` that are this organization's deployments: another's are as unknown as a missing one."""
    c = DEPLOYMENT.c
    own: list[str] = []
    for batch in chunked(sorted(set(ids)), IDS_PER_STATEMENT):
        statement = sa.select(c.id).where(one_of(session, c.id, batch), c.organization_id == organization_id)
        own += run(session, statement).scalars()
    return own


def held_deployment_counts(session: Session) -> list[tuple[str, str, int]]:
    """(organization, hold reason, held deployments) for every organization with held deployments."""
    c = DEPLOYMENT.c
    statement = (
        sa.select(c.organization_id, c.hold_reason, sa.func.count().label("n"))
        .where(c.hold_reason.is_not(None))
        .group_by(c.organization_id, c.hold_reason)
    )
    return [(r.organization_id, r.hold_reason, int(r.n)) for r in run(session, statement)]


def get_device(session: Session, *, device_id: str) -> Device | None:
    return session.get(Device, device_id)


def get_receipt(session: Session, *, receipt_id: int | None) -> PushReceipt | None:
    """The push receipt, or None: also for a deployment not pushed yet (`receipt_id` None)."""
    return None if receipt_id is None else session.get(PushReceipt, receipt_id)


def deployment_organizations(session: Session, *, ids: Collection[str]) -> dict[str, list[str]]:
    """Those of `ids` that are deployments, by organization, in id order; the others are left out."""
    c = DEPLOYMENT.c
    found: dict[str, list[str]] = {}
    for batch in chunked(sorted(set(ids)), IDS_PER_STATEMENT):
        statement = sa.select(c.organization_id, c.id).where(one_of(session, c.id, batch)).order_by(c.id)
        for row in run(session, statement):
            found.setdefault(row.organization_id, []).append(row.id)
    return found
