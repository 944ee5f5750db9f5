"""Push credentials over HTTP: upload (validated, its expiry read back, what was held for the old one
released and enqueued) and list. Secrets are write-only: no answer ever carries one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlmodel import select

from api.auth import Caller, OrganizationId
from api.errors import INVALID_REQUEST, ApiError
from api.text import StoredText
from models.enums import CredentialKind, Provider, PushEnvironment
from models.tables import PushCredential
from workers.actors import Actors
from workers.providers.credentials import InvalidCredential
from workers.services.credentials import store_credential


class CredentialIn(StoredText):
    kind: CredentialKind
    secret: str = Field(min_length=1, max_length=20_000, description="PEM, service-account JSON or API key.")
    keyId: str | None = Field(default=None, max_length=64)
    teamId: str | None = Field(default=None, max_length=64)
    topic: str | None = Field(default=None, max_length=255)
    projectId: str | None = Field(default=None, max_length=255)
    environment: PushEnvironment = PushEnvironment.production


class CredentialOut(BaseModel):
    provider: str
    kind: str
    status: str
    statusReason: str | None
    notAfter: datetime | None
    keyId: str | None
    teamId: str | None
    topic: str | None
    projectId: str | None
    environment: str
    updatedAt: datetime
    released: int | None = None


class CredentialAnswer(BaseModel):
    status: bool = True
    data: CredentialOut


class CredentialsAnswer(BaseModel):
    status: bool = True
    data: list[CredentialOut]


def router(actors: Actors) -> APIRouter:
    routes = APIRouter(prefix="/v1/organizations/{organizationId}/credentials", tags=["credentials"])
    app = actors.app

    @routes.put("/{provider}", response_model=CredentialAnswer, response_model_exclude_none=False)
    def upload(
        organizationId: OrganizationId,
        provider: Provider,
        body: CredentialIn,
        caller: Caller,
    ) -> dict[str, Any]:
        """Required permission: `mdm.credential.manage`. Replaces the organization's credential for the
        provider once it validates; a certificate's expiry is read from it. Deployments held for the old one
        are released and enqueued. The secret is never returned."""
        caller.require(organizationId, "mdm.credential.manage")
        try:
            with app.session() as session:
                stored = store_credential(
                    session,
                    organization_id=organizationId,
                    provider=provider,
                    kind=body.kind,
                    secret=body.secret,
                    key_id=body.keyId,
                    team_id=body.teamId,
                    topic=body.topic,
                    project_id=body.projectId,
                    environment=body.environment,
                )
                answer = _out(stored.credential) | {"released": len(stored.released)}
        except InvalidCredential as e:  # names the field, never the value
            raise ApiError(INVALID_REQUEST, str(e)) from None
        actors.enqueue_ids(stored.released)
        return {"status": True, "data": answer}

    @routes.get("", response_model=CredentialsAnswer)
    def listing(organizationId: OrganizationId, caller: Caller) -> dict[str, Any]:
        """Required permission: `mdm.credential.manage`. Every credential with its status and expiry."""
        caller.require(organizationId, "mdm.credential.manage")
        with app.session() as session:
            rows = session.exec(
                select(PushCredential).where(PushCredential.organization_id == organizationId)
            )
            return {"status": True, "data": [_out(row) for row in rows]}

    return routes


def _out(row: PushCredential) -> dict[str, Any]:
    return {
        "provider": row.provider.value,
        "kind": row.kind.value,
        "status": row.status.value,
        "statusReason": row.status_reason,
        "notAfter": row.not_after,
        "keyId": row.key_id,
        "teamId": row.team_id,
        "topic": row.topic,
        "projectId": row.project_id,
        "environment": row.environment.value,
        "updatedAt": row.updated_at,
    }
