"""Small helpers shared by the store modules."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
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


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name
