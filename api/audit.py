"""The organization's audit record over HTTP: who uploaded credentials, forced a topic change, cancelled or
retried deployments, created or revoked tokens and rotated secrets, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, Field

from api.auth import Caller, OrganizationId
from api.representation import audit_event
from models.store.audit import audit_events
from workers.app import App

BIGINT_MAX = 2**63 - 1  # an event id; a larger cursor is a 400, not the database's overflow


class AuditEventOut(BaseModel):
    id: int
    organizationId: str
    at: datetime
    actor: str = Field(description="The API token's id, `cli` or `scheduler`; never a secret.")
    action: str
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next: int | None = Field(description="The cursor of the next (older) page; null on the last one.")


class AuditPageAnswer(BaseModel):
    status: bool = True
    data: AuditPage


def router(app: App) -> APIRouter:
    routes = APIRouter(prefix="/v1/organizations/{organizationId}", tags=["audit"])

    @routes.get("/audit-events", response_model=AuditPageAnswer)
    def listing(
        *,
        organizationId: OrganizationId,
        caller: Caller,
        action: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_.]+$")] = None,
        since: AwareDatetime | None = None,
        cursor: Annotated[int | None, Query(ge=1, le=BIGINT_MAX)] = None,
        limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    ) -> dict[str, Any]:
        """Required permission: `mdm.audit.get`. The organization's audit events, newest first: only
        `action`'s, only those at or after `since` (ISO 8601 with a UTC offset) when given; `limit` a page,
        the next (older) page from `cursor`."""
        caller.require(organizationId, "mdm.audit.get")
        with app.session() as session:
            page = audit_events(
                session,
                organization_id=organizationId,
                action=action,
                since=since,
                before=cursor,
                limit=limit + 1,
            )
        items = [audit_event(e) for e in page[:limit]]
        return {
            "status": True,
            "data": {"items": items, "next": page[limit - 1].id if len(page) > limit else None},
        }

    return routes
