"""Receipts of pushes whose provider reports delivery (AOSP): which to poll, and what the poll found."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from models.enums import Provider
from models.store._sql import run

RECEIPT = SQLModel.metadata.tables["push_receipt"]
r = RECEIPT.c


@dataclass(frozen=True)
class ToPoll:
    id: int
    organization_id: str
    provider_push_id: str


def receipts_to_poll(session: Session, *, now: datetime, polled_before: datetime, limit: int) -> list[ToPoll]:
    """AOSP receipts not known delivered, not expired and still tracked by the service, not polled since
    `polled_before`; least recently polled first, so that a backlog is worked through in turn."""
    statement = (
        sa.select(r.id, r.organization_id, r.provider_push_id)
        .where(
            r.provider == Provider.aosp.value,
            sa.or_(r.delivered.is_(None), r.delivered.is_(False)),
            sa.or_(r.expires_at.is_(None), r.expires_at > now),
            r.provider_push_id.is_not(None),
            r.untracked_at.is_(None),
            sa.or_(r.last_polled_at.is_(None), r.last_polled_at < polled_before),
        )
        .order_by(r.last_polled_at.asc().nulls_first(), r.id)
        .limit(limit)
    )
    return [ToPoll(row.id, row.organization_id, row.provider_push_id) for row in run(session, statement)]


def record_poll(
    session: Session,
    *,
    receipt_id: int,
    now: datetime,
    pending_devices: int | None = None,
    expires_at: datetime | None = None,
) -> None:
    """What one poll found; `pending_devices` None: the provider no longer knows the push (left as it was)."""
    values: dict[str, object] = {"last_polled_at": now}
    if pending_devices is not None:
        values |= {"pending_devices": pending_devices, "delivered": pending_devices == 0}
    if expires_at is not None:
        values["expires_at"] = expires_at
    run(session, sa.update(RECEIPT).where(r.id == receipt_id).values(**values))


def record_untracked(session: Session, *, receipt_id: int, now: datetime) -> None:
    """The service no longer tracks the push (AOSP `INVALID_PUSH_ID`): expired, or delivered to every device
    by its older documents. Decided by the stored expiry: past it, an expired push like any other (no
    longer polled); before it, marked untracked, its delivery unknown, and not polled again."""
    expired = sa.and_(r.expires_at.is_not(None), r.expires_at <= now)
    values: dict[str, object] = {
        "last_polled_at": now,
        "untracked_at": sa.case((expired, r.untracked_at), else_=now),
        "delivered": sa.case((expired, r.delivered), else_=None),
        "pending_devices": sa.case((expired, r.pending_devices), else_=None),
    }
    run(session, sa.update(RECEIPT).where(r.id == receipt_id).values(**values))
