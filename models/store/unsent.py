"""Creates whose dispatch messages may not have gone out (`unsent_create`): one row per create, so that a
process that dies between the commit and the send leaves its deployments to the relay, not to the re-push."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from models.ids import id_run
from models.store._sql import commit_without_flush, run
from models.store.sweeps import unmark_enqueued

UNSENT = SQLModel.metadata.tables["unsent_create"]
c = UNSENT.c


def record_unsent(session: Session, *, organization_id: str, ids: list[str], now: datetime) -> int:
    """In the transaction that creates `ids` (one `new_ids` run) as enqueued already: their messages are yet
    to be sent. Returns the record's id, for `forget_unsent` once they were."""
    statement = sa.insert(UNSENT).values(
        organization_id=organization_id, first_id=ids[0], count=len(ids), created_at=now
    )
    return int(run(session, statement.returning(c.id)).scalar_one())


def forget_unsent(session: Session, *, record_id: int) -> None:
    """Their messages went out (or the deployments were unmarked for the relay already). Committed without
    waiting for the disk: lost in a database crash, the record makes the relay send again what was not
    pushed yet, which at worst wakes a device twice."""
    commit_without_flush(session)
    run(session, sa.delete(UNSENT).where(c.id == record_id))


def hand_unsent_to_relay(session: Session, *, created_before: datetime, limit: int) -> int:
    """Creates recorded before `created_before` and never forgotten (their process died before or while it
    sent): their deployments not pushed since are unmarked, for the relay to enqueue, and the records go.
    Returns how many records it took."""
    rows = (
        run(
            session,
            sa.select(c.id, c.first_id, c.count)
            .where(c.created_at <= created_before)
            .order_by(c.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True),
        )
        .mappings()
        .all()
    )
    for row in rows:
        unmark_enqueued(session, ids=id_run(row["first_id"], row["count"]))
    if rows:
        run(session, sa.delete(UNSENT).where(c.id.in_([row["id"] for row in rows])))
    return len(rows)
