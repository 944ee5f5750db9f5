"""Small helpers shared by the store modules; private to models/store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import CursorResult, Row
from sqlmodel import Session, SQLModel

import models.tables  # noqa: F401  (registers the tables on the metadata)
from models.batches import IDS_PER_STATEMENT, chunked

__all__ = [
    "DEPLOYMENT",
    "DEVICE",
    "EVENT",
    "IDS_PER_STATEMENT",
    "chunked",
    "commit_without_flush",
    "dialect_of",
    "in_id_order",
    "lock_deployments",
    "one_of",
    "run",
    "update_deployments",
]

DEPLOYMENT = SQLModel.metadata.tables["deployment"]
EVENT = SQLModel.metadata.tables["deployment_event"]
DEVICE = SQLModel.metadata.tables["device"]


def run(
    session: Session,
    statement: sa.Executable,
    params: Sequence[dict[str, Any]] | Mapping[str, Any] | None = None,
) -> CursorResult[Any]:
    """Run a Core statement in the session's transaction, past the ORM: set-based writes need no identity map.
    Objects the session already loaded are not refreshed by it."""
    return session.connection().execute(statement, params)


def one_of(session: Session, column: sa.ColumnElement[Any], values: Sequence[Any]) -> sa.ColumnElement[bool]:
    """`column IN values`. On PostgreSQL, `column = ANY(:values)`: one array parameter, so that the statement
    is parsed once and reused whatever the number of values (psycopg parses anew a statement of more than
    50 parameters)."""
    if dialect_of(session) == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


def in_id_order(session: Session, where: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """`where`, for an UPDATE of deployments that may touch many rows: the rows are locked first, in id order,
    so that two such UPDATEs never deadlock on PostgreSQL.

    The locking SELECT is an ARRAY(...) sub-select, which PostgreSQL runs once, before the UPDATE, whatever
    plan it picks (`id IN (SELECT … FOR UPDATE)` may become a nested loop that locks again for every row).
    The UPDATE needs no second test of `where`: a row changed by another writer before it was locked is
    tested again on its new version by the lock. SQLite has one writer and no row locks: there it is just
    `where`."""
    if dialect_of(session) == "sqlite":
        return where
    locked = sa.select(DEPLOYMENT.c.id).where(where).order_by(DEPLOYMENT.c.id).with_for_update()
    return DEPLOYMENT.c.id == sa.any_(sa.func.array(locked.scalar_subquery()))


def update_deployments(
    session: Session,
    *,
    ids: Sequence[str],
    where: sa.ColumnElement[bool] | None = None,
    values: Mapping[str, Any],
    returning: Sequence[sa.ColumnElement[Any]] = (),
) -> list[Row[Any]]:
    """UPDATE the deployments `ids` that also match `where`, a batch of ids per statement, each batch's rows
    locked in id order first (`in_id_order`); the `returning` columns of the updated rows."""
    c = DEPLOYMENT.c
    updated: list[Row[Any]] = []
    for batch in chunked(list(dict.fromkeys(ids)), IDS_PER_STATEMENT):
        matches = one_of(session, c.id, batch)
        if where is not None:
            matches = sa.and_(matches, where)
        statement = sa.update(DEPLOYMENT).where(in_id_order(session, matches)).values(dict(values))
        if returning:
            updated += run(session, statement.returning(*returning)).all()
        else:
            run(session, statement)
    return updated


def lock_deployments(session: Session, *, ids: Sequence[str]) -> None:
    """Lock these deployment rows now, in id order, for a transaction that goes on to write them in several
    statements: its later statements then wait for no row another writer could hold. No-op on SQLite."""
    if dialect_of(session) == "sqlite":
        return
    for batch in chunked(sorted(set(ids)), IDS_PER_STATEMENT):
        locked = (
            sa.select(DEPLOYMENT.c.id)
            .where(one_of(session, DEPLOYMENT.c.id, batch))
            .order_by(DEPLOYMENT.c.id)
        )
        run(session, locked.with_for_update())


def commit_without_flush(session: Session) -> None:
    """Let this transaction's commit return before PostgreSQL flushed it to disk (`synchronous_commit` off,
    for this transaction only): for a write whose loss in a database crash costs nothing but a repeat. A
    later transaction's flushed commit flushes this one too (the log is written in order). A commit's flush
    is most of a small transaction's time on a busy disk. No-op on SQLite."""
    if dialect_of(session) == "postgresql":
        run(session, sa.text("SET LOCAL synchronous_commit TO OFF"))


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name
