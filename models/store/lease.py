"""The scheduler's leader lease: one row per lease name."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel

from models.store._sql import dialect_of, run

LEASE = SQLModel.metadata.tables["scheduler_lease"]


def take_lease(session: Session, *, name: str, holder: str, now: datetime, expires_at: datetime) -> bool:
    """Insert the row, or take it over where it is `holder`'s or expired; whether `holder` holds it now. One
    statement, so two schedulers asking at once cannot both win. `acquired_at` stays while a holder
    renews."""
    insert = postgresql.insert if dialect_of(session) == "postgresql" else sqlite.insert
    statement = insert(LEASE).values(name=name, holder=holder, acquired_at=now, expires_at=expires_at)
    ours = statement.excluded.holder == LEASE.c.holder
    upsert = statement.on_conflict_do_update(
        index_elements=[LEASE.c.name],
        set_={
            "holder": statement.excluded.holder,
            "acquired_at": sa.case((ours, LEASE.c.acquired_at), else_=statement.excluded.acquired_at),
            "expires_at": statement.excluded.expires_at,
        },
        where=sa.or_(ours, LEASE.c.expires_at <= now),
    )
    return run(session, upsert.returning(LEASE.c.holder)).first() is not None


def release_lease(session: Session, *, name: str, holder: str, now: datetime) -> None:
    """Expire the row now if `holder` holds it, so that another scheduler takes it at its next try."""
    statement = sa.update(LEASE).where(LEASE.c.name == name, LEASE.c.holder == holder).values(expires_at=now)
    run(session, statement)


def holds_lease(session: Session, *, name: str, holder: str, now: datetime) -> bool:
    """Whether the row names `holder`, unexpired at `now`."""
    statement = sa.select(LEASE.c.holder, LEASE.c.expires_at).where(LEASE.c.name == name)
    row = run(session, statement).first()
    return row is not None and row.holder == holder and row.expires_at > now


def lease_row(session: Session, *, name: str) -> tuple[str, datetime] | None:
    """Who the row names and until when, or None before anyone took it."""
    statement = sa.select(LEASE.c.holder, LEASE.c.expires_at).where(LEASE.c.name == name)
    row = run(session, statement).first()
    return None if row is None else (row.holder, row.expires_at)
