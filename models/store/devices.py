"""Devices and their push tokens."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Session

from models.enums import PLATFORM_PROVIDER, Platform
from models.ids import new_ids
from models.store._sql import DEVICE, IDS_PER_STATEMENT, chunked, dialect_of, run
from models.types import utcnow

_TEXT_ARRAY = postgresql.ARRAY(sa.Text)


@dataclass(frozen=True)
class NewDevice:
    platform: Platform
    push_token: str = field(repr=False)
    push_magic: str | None = field(default=None, repr=False)
    id: str | None = None


def add_devices(session: Session, *, organization_id: str, devices: Sequence[NewDevice]) -> list[str]:
    """Insert `devices` in one set-based statement per batch; returns their ids in order."""
    fresh = iter(new_ids(len(devices)))
    now = utcnow()
    rows: list[dict[str, Any]] = [
        {
            "id": device.id or next(fresh),
            "organization_id": organization_id,
            "platform": device.platform,
            "provider": PLATFORM_PROVIDER[device.platform],
            "push_token": device.push_token,
            "push_magic": device.push_magic,
            "token_state": "valid",
            "created_at": now,
        }
        for device in devices
    ]
    for batch in chunked(rows, IDS_PER_STATEMENT):
        run(session, sa.insert(DEVICE), list(batch))
    return [row["id"] for row in rows]


def unknown_device_ids(session: Session, *, organization_id: str, ids: Collection[str]) -> set[str]:
    """Those of `ids` that are not enrolled devices of `organization_id`: a device of another organization
    is not, nor an unenrolled one (nothing is sent to it again)."""
    if not ids:
        return set()
    if dialect_of(session) == "postgresql":
        # An anti-join against one array parameter (cheaper than IN lists of bind parameters for many ids):
        # only the unknown ids travel back, usually none.
        wanted = (
            sa.func.unnest(sa.literal(sorted(ids), _TEXT_ARRAY))
            .table_valued("id")
            .render_derived(name="wanted")
        )
        ours = sa.and_(
            DEVICE.c.id == wanted.c.id,
            DEVICE.c.organization_id == organization_id,
            DEVICE.c.unenrolled_at.is_(None),
        )
        statement = (
            sa.select(wanted.c.id).select_from(wanted.outerjoin(DEVICE, ours)).where(DEVICE.c.id.is_(None))
        )
        return set(run(session, statement).scalars())
    found: set[str] = set()
    for batch in chunked(sorted(ids), IDS_PER_STATEMENT):
        statement = sa.select(DEVICE.c.id).where(
            DEVICE.c.organization_id == organization_id,
            DEVICE.c.id.in_(batch),
            DEVICE.c.unenrolled_at.is_(None),
        )
        found.update(run(session, statement).scalars())
    return set(ids) - found
