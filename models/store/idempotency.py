"""Idempotency keys (`idempotency_key`): claim one for a request, keep its answer, find it for a retry, purge
the expired ones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel

from config.errors import MdmqError
from models.store._sql import commit_without_flush, dialect_of, run

KEYS = SQLModel.metadata.tables["idempotency_key"]
c = KEYS.c


@dataclass(frozen=True)
class NewClaim:
    """Who asks for a key: the organization, the key, the request's hash, and this request's claim token."""

    organization_id: str
    key: str
    request_hash: str
    claim: str


@dataclass(frozen=True)
class KeyState:
    """What `claim_key` found: `claimed` (this request holds the key and does the work); else the key is
    another request's — `reused` with another body, `answer_status` and `answer` when it succeeded, or in
    progress (neither)."""

    claimed: bool
    reused: bool = False
    answer_status: int | None = None
    answer: dict[str, Any] | None = None


class ClaimLost(MdmqError):
    """The key was taken over by a retry while this request worked (it held the key past its lock): this
    request's work must not commit."""


def claim_key(session: Session, *, claim: NewClaim, now: datetime, lock_s: float, keep_s: float) -> KeyState:
    """Take the key for this request, unless another holds it. A key is free when it is new, when it expired,
    or when the request that held it gave up without an answer (its lock ran out: its process died before its
    work committed) and this one has the same body. Concurrent claims of one key: one wins (the primary key
    decides), the others find it in progress.

    Committed without waiting for the disk: the work's own commit, later, flushes the claim with it; a claim
    lost in a database crash lost its work too, and the retry claims the key anew."""
    commit_without_flush(session)
    values = {
        "organization_id": claim.organization_id,
        "key": claim.key,
        "request_hash": claim.request_hash,
        "claim": claim.claim,
        "locked_until": now + timedelta(seconds=lock_s),
        "answer_status": None,
        "answer": None,
        "created_at": now,
        "expires_at": now + timedelta(seconds=keep_s),
    }
    insert = postgresql.insert(KEYS) if dialect_of(session) == "postgresql" else sqlite.insert(KEYS)
    free = sa.or_(
        c.expires_at <= now,
        sa.and_(c.answer_status.is_(None), c.locked_until <= now, c.request_hash == claim.request_hash),
    )
    statement = insert.values(values).on_conflict_do_update(
        index_elements=[c.organization_id, c.key],
        set_={name: value for name, value in values.items() if name not in ("organization_id", "key")},
        where=free,
    )
    taken = run(session, statement.returning(c.claim)).scalar_one_or_none()
    if taken == claim.claim:
        return KeyState(claimed=True)
    return _held(session, claim)


def _held(session: Session, claim: NewClaim) -> KeyState:
    statement = sa.select(c.request_hash, c.answer_status, c.answer).where(
        c.organization_id == claim.organization_id, c.key == claim.key
    )
    row = run(session, statement).one_or_none()
    if row is None:  # expired and purged since the claim was refused: in progress, for the client's retry
        return KeyState(claimed=False)
    if row.request_hash != claim.request_hash:
        return KeyState(claimed=False, reused=True)
    return KeyState(claimed=False, answer_status=row.answer_status, answer=row.answer)


def keep_answer(session: Session, *, claim: NewClaim, status: int, answer: dict[str, Any]) -> None:
    """Keep the answer of the request that holds the key, in the transaction of the work it answers (so that
    work and answer commit together); `ClaimLost` when the key is no longer this request's."""
    statement = (
        sa.update(KEYS)
        .where(
            c.organization_id == claim.organization_id,
            c.key == claim.key,
            c.claim == claim.claim,
            c.answer_status.is_(None),
        )
        .values(answer_status=status, answer=answer)
    )
    if run(session, statement).rowcount != 1:
        raise ClaimLost()


def release_key(session: Session, *, claim: NewClaim) -> None:
    """Give the key up: the request failed and did nothing, so a retry may run it again."""
    run(
        session,
        sa.delete(KEYS).where(
            c.organization_id == claim.organization_id,
            c.key == claim.key,
            c.claim == claim.claim,
            c.answer_status.is_(None),
        ),
    )


def purge_expired_keys(session: Session, *, before: datetime) -> int:
    """Delete the keys that expired before `before` (the retention purge); returns how many."""
    return int(run(session, sa.delete(KEYS).where(c.expires_at <= before)).rowcount)
