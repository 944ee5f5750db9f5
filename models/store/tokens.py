"""API tokens: created with an organization and permissions, found by their hash."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from sqlmodel import Session, select

from models.ids import new_id
from models.tables import ApiToken

PREFIX = "mdmq_"  # recognisable in a secret scanner's rules and in a leaked paste


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, *, organization_id: str, permissions: Sequence[str]
) -> tuple[ApiToken, str]:
    """A new token; returns its row and the token itself, which is stored nowhere and shown this once."""
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        id=new_id(),
        organization_id=organization_id,
        token_hash=token_hash(token),
        permissions=sorted(set(permissions)),
    )
    session.add(row)
    session.flush()
    return row, token


def find_token(session: Session, token: str) -> ApiToken | None:
    """The live token row for `token`, or None (unknown or revoked)."""
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == token_hash(token))).first()
    return row if row is not None and row.revoked_at is None else None
