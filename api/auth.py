"""Bearer tokens: an organization and permissions, found by the token's hash."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request

from api.errors import (
    ENTITY_NOT_FOUND,
    EXPIRED_TOKEN,
    INVALID_TOKEN,
    NO_AUTH_TOKEN,
    PERMISSION_DENIED,
    ApiError,
)
from models.ids import ID_PATTERN, ORGANIZATION_ID_PATTERN
from models.permissions import PERMISSIONS
from models.store.tokens import TokenExpired, TokenRefused, expiry_of, is_legacy, use_token
from models.tables import ApiToken
from workers.app import App

log = logging.getLogger(__name__)

# What the routes take: path ids checked against the patterns of DESIGN §2, and the caller. Module level,
# because FastAPI resolves the routes' (string) annotations in their modules' globals.
OrganizationId = Annotated[str, Path(pattern=ORGANIZATION_ID_PATTERN.pattern)]
EntityId = Annotated[str, Path(pattern=ID_PATTERN.pattern)]


@dataclass(frozen=True)
class Principal:
    organization_id: str
    permissions: frozenset[str]
    token_id: str | None = None  # the API token's id: the actor of what the audit record keeps

    @property
    def actor(self) -> str:
        """Who the audit record names: the API token's id, never the token."""
        return self.token_id or "api"

    def require(self, organization_id: str, permission: str) -> None:
        """An entity of another organization is not found, exactly as a missing one; then the permission."""
        assert permission in PERMISSIONS, f"{permission} is not in models.permissions.PERMISSIONS"
        if organization_id != self.organization_id:
            raise ApiError(ENTITY_NOT_FOUND)
        if permission not in self.permissions:
            raise ApiError(PERMISSION_DENIED, permission)


def principal(request: Request) -> Principal:
    """The caller, from `Authorization: Bearer <token>`."""
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(NO_AUTH_TOKEN)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(NO_AUTH_TOKEN)
    app: App = request.app.state.mdmq
    try:
        with app.session() as session:
            row = use_token(session, token)
    except TokenExpired:
        raise ApiError(EXPIRED_TOKEN, "create a new one with `mdmq token create`") from None
    except TokenRefused:
        raise ApiError(INVALID_TOKEN) from None
    if is_legacy(row):
        _warn_legacy(row)
    return Principal(row.organization_id, frozenset(row.permissions), row.id)


def _warn_legacy(row: ApiToken) -> None:
    log.warning(
        "API token %s of %s was created before tokens expired: it expires at %s; create a new one with "
        "`mdmq token create` and revoke this one",
        row.id,
        row.organization_id,
        f"{expiry_of(row):%Y-%m-%d %H:%M} UTC",
    )


Caller = Annotated[Principal, Depends(principal)]
