"""API tokens: an organization, permissions of the closed set and an expiry; found by their hash, revoked by
their id."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from config.errors import MdmqError
from models.ids import new_id
from models.permissions import OPS_VIEW, PERMISSIONS, mixes_ops, unknown_permissions
from models.store._sql import run
from models.tables import ApiToken, table_of
from models.types import utcnow

PREFIX = "mdmq_"  # recognisable in a secret scanner's rules and in a leaked paste
DEFAULT_LIFETIME = timedelta(days=90)
MAX_LIFETIME = timedelta(days=366)
# A token's last use is kept to this: a request writes only when the stored one is older.
LAST_USED_RESOLUTION = timedelta(minutes=1)

TOKEN = table_of(ApiToken)


class UnknownPermission(MdmqError, ValueError):
    """A permission outside the closed set, or none: nothing was created."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        said = f"unknown permission(s): {', '.join(self.names)}" if names else "no permission given"
        super().__init__(f"{said}; the permissions are: {', '.join(sorted(PERMISSIONS))}")


class MixedPermissions(MdmqError, ValueError):
    """An operator's token (mdm.ops.view) carries no other permission: create one token for each."""

    def __init__(self) -> None:
        super().__init__(f"{OPS_VIEW} is an operator's permission and goes alone: create one token for each")


class InvalidLifetime(MdmqError, ValueError):
    """A token's lifetime is more than nothing and at most 366 days."""


class TokenRefused(MdmqError):
    """The token is unknown or revoked."""


class TokenExpired(TokenRefused):
    """The token has expired."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session,
    *,
    organization_id: str,
    permissions: Sequence[str],
    lifetime: timedelta = DEFAULT_LIFETIME,
    now: datetime | None = None,
) -> tuple[ApiToken, str]:
    """A new token; returns its row and the token itself, which is stored nowhere and shown this once.
    Raises `UnknownPermission`, `MixedPermissions` or `InvalidLifetime`, having created nothing."""
    unknown = unknown_permissions(permissions)
    if unknown or not permissions:
        raise UnknownPermission(unknown)
    if mixes_ops(permissions):
        raise MixedPermissions()
    if not timedelta(0) < lifetime <= MAX_LIFETIME:
        raise InvalidLifetime(f"a token lives more than 0 and at most {MAX_LIFETIME.days} days")
    now = now or utcnow()
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        id=new_id(),
        organization_id=organization_id,
        token_hash=token_hash(token),
        permissions=sorted(set(permissions)),
        created_at=now,
        expires_at=now + lifetime,
    )
    session.add(row)
    session.flush()
    return row, token


def use_token(session: Session, token: str, *, now: datetime | None = None) -> ApiToken:
    """The live token row for `token`, its last use noted (at most once a `LAST_USED_RESOLUTION` per
    token). Raises `TokenExpired`, or `TokenRefused` for an unknown or revoked token. Reads the database
    every time: a revocation holds from the next request on, in every process."""
    now = now or utcnow()
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == token_hash(token))).first()
    if row is None or row.revoked_at is not None:
        raise TokenRefused()
    if expiry_of(row) <= now:
        raise TokenExpired()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        _note_use(session, row, now)
    return row


def use_token_id(session: Session, token_id: str, *, now: datetime | None = None) -> ApiToken:
    """As `use_token`, for a token named by its id: the operator's page keeps the id in its signed cookie,
    never the token, and checks the row on every request."""
    now = now or utcnow()
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked_at is not None:
        raise TokenRefused()
    if expiry_of(row) <= now:
        raise TokenExpired()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        _note_use(session, row, now)
    return row


def _note_use(session: Session, row: ApiToken, now: datetime) -> None:
    # Conditional, so that of the processes that saw the same stale time only one writes the row.
    stale = sa.or_(TOKEN.c.last_used_at.is_(None), TOKEN.c.last_used_at <= now - LAST_USED_RESOLUTION)
    run(session, TOKEN.update().where(TOKEN.c.id == row.id, stale).values(last_used_at=now))


def expiry_of(row: ApiToken) -> datetime:
    """When the token expires. A row the release before expiries wrote during a rolling deploy has none:
    the default lifetime from its creation."""
    return row.expires_at or row.created_at + DEFAULT_LIFETIME


def is_legacy(row: ApiToken) -> bool:
    """Created before tokens expired: its expiry is the one the upgrade gave it, not one its creator chose."""
    return bool(row.legacy) or row.expires_at is None


def list_tokens(session: Session, *, organization_id: str | None = None) -> list[ApiToken]:
    """Every token (of `organization_id` when given), revoked and expired ones included, newest first."""
    statement = select(ApiToken)
    if organization_id is not None:
        statement = statement.where(ApiToken.organization_id == organization_id)
    return list(session.exec(statement.order_by(col(ApiToken.created_at).desc(), col(ApiToken.id).desc())))


def get_token(session: Session, *, token_id: str) -> ApiToken | None:
    return session.get(ApiToken, token_id)


def revoke_token(session: Session, *, token_id: str, now: datetime | None = None) -> bool:
    """Revoke the token `token_id`; False when there is no such token, or it was revoked already."""
    live = sa.and_(TOKEN.c.id == token_id, TOKEN.c.revoked_at.is_(None))
    revoked = run(session, TOKEN.update().where(live).values(revoked_at=now or utcnow()))
    return revoked.rowcount == 1
