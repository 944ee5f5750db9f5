"""Small helpers shared by the store modules."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import CursorResult
from sqlmodel import Session, SQLModel

import models.tables  # noqa: F401  (registers the tables on the metadata)

T = TypeVar("T")

# Ids per IN (...) list: far under SQLite's 32,766 and PostgreSQL's 65,535 bind parameters.
IDS_PER_STATEMENT = 5_000

DEPLOYMENT = SQLModel.metadata.tables["deployment"]
EVENT = SQLModel.metadata.tables["deployment_event"]
DEVICE = SQLModel.metadata.tables["device"]


def run(
    session: Session, statement: sa.Executable, params: Sequence[dict[str, Any]] | None = None
) -> CursorResult[Any]:
    """Run a Core statement in the session's transaction, past the ORM: set-based writes need no identity map.
    Objects the session already loaded are not refreshed by it."""
    return session.connection().execute(statement, params)


def one_of(session: Session, column: sa.ColumnElement[Any], values: Sequence[Any]) -> sa.ColumnElement[bool]:
    """`column IN values`. On PostgreSQL, `column = ANY(:values)`: one array parameter, where an IN list is a
    parameter per value. psycopg parses a statement of more than 50 parameters anew each time, and in the
    100,000-deployment fan-out those parses were a sixth of a worker's CPU; with one parameter it is parsed
    once and reused."""
    if dialect_of(session) == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


def in_id_order(session: Session, where: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """`where`, for an UPDATE of deployments that may touch many rows: the rows are locked first, in id order.

    Two multi-row UPDATEs that lock the same rows in different orders (one walks the primary key, the other
    the heap) deadlock on PostgreSQL; every such UPDATE here takes its locks in one order instead.

    The locking SELECT is an ARRAY(...) sub-select, which PostgreSQL runs once, before the UPDATE, whatever
    plan it picks. As `id IN (SELECT … FOR UPDATE)` it was a join, and when the statistics said few rows
    matched, the planner made it a nested loop that ran the SELECT again for every row: 5,000 ids cost
    12.5 million row locks, 30 s and more, and the writers behind them timed out. The UPDATE needs no second
    test of `where`: a row another writer changed before it was locked is tested again on its new version
    by the lock, and kept only if it still matches. SQLite has one writer and no row locks: there it is
    just `where`."""
    if dialect_of(session) == "sqlite":
        return where
    locked = sa.select(DEPLOYMENT.c.id).where(where).order_by(DEPLOYMENT.c.id).with_for_update()
    return DEPLOYMENT.c.id == sa.any_(sa.func.array(locked.scalar_subquery()))


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


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name
