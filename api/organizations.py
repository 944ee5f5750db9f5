"""An organization's settings over HTTP: its wake-up rate (pushes per second of bulk work; null: unpaced)
and its weight on the bulk lane beside other organizations (DESIGN §4.7)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Caller, OrganizationId
from api.errors import ENTITY_NOT_FOUND, ApiError
from models.store.audit import record_audit_event
from models.store.organizations import (
    MAX_FAIR_WEIGHT,
    MAX_WAKE_RATE_PER_S,
    MIN_WAKE_RATE_PER_S,
    FairShare,
    UnknownOrganization,
    fair_share_of,
    organization_exists,
    set_fair_share,
)
from workers.app import App


class SettingsIn(BaseModel):
    """Only the fields given change; `null` puts one back to its default."""

    model_config = ConfigDict(extra="forbid")

    wakeRatePerS: float | None = Field(
        default=None,
        ge=MIN_WAKE_RATE_PER_S,  # why these bounds: beside them, in models.store.organizations
        le=MAX_WAKE_RATE_PER_S,
        allow_inf_nan=False,
        description="Wake-up pushes per second for bulk work (0.1 to 100000), shared by every worker; "
        "null: as fast as the providers accept them. Urgent work (security actions, `urgent: true`) is "
        "never paced.",
    )
    fairWeight: int | None = Field(
        default=None,
        ge=1,
        le=MAX_FAIR_WEIGHT,
        strict=True,
        description="The organization's share of the bulk lane beside others waiting at the same time: "
        "a weight of 2 gets twice the chunks of a weight of 1. null: 1.",
    )


class SettingsOut(BaseModel):
    organizationId: str
    wakeRatePerS: float | None
    fairWeight: int


class SettingsAnswer(BaseModel):
    status: bool = True
    data: SettingsOut


def router(app: App) -> APIRouter:
    routes = APIRouter(prefix="/v1/organizations/{organizationId}", tags=["organizations"])

    @routes.get("/settings", response_model=SettingsAnswer)
    def get(organizationId: OrganizationId, caller: Caller) -> dict[str, Any]:
        """Required permission: `mdm.organization.manage`. The organization's wake-up rate and weight."""
        caller.require(organizationId, "mdm.organization.manage")
        with app.session() as session:
            if not organization_exists(session, organization_id=organizationId):
                raise ApiError(ENTITY_NOT_FOUND)
            share = fair_share_of(session, organization_id=organizationId)
        return {"status": True, "data": _settings(organizationId, share)}

    @routes.patch("/settings", response_model=SettingsAnswer)
    def change(organizationId: OrganizationId, body: SettingsIn, caller: Caller) -> dict[str, Any]:
        """Required permission: `mdm.organization.manage`. Changes the fields given (`null`: back to the
        default), kept in the audit record. A rate outside 0.1-100,000, or a weight outside 1-100, is a
        400 and changes nothing; an unknown organization is a 404 (3001), never created. Chunks already
        waiting keep the pace they were booked at."""
        caller.require(organizationId, "mdm.organization.manage")
        given = body.model_fields_set
        changes: dict[str, Any] = {}
        if "wakeRatePerS" in given:
            changes["wake_rate_per_s"] = body.wakeRatePerS
        if "fairWeight" in given:
            changes["weight"] = body.fairWeight
        with app.session() as session:
            try:
                share = set_fair_share(session, organization_id=organizationId, **changes)
            except UnknownOrganization:  # never created by a setting: a 404, as the GET
                raise ApiError(ENTITY_NOT_FOUND) from None
            if changes:
                record_audit_event(
                    session,
                    organization_id=organizationId,
                    actor=caller.actor,
                    action="settings.changed",
                    detail={name: body.model_dump()[name] for name in sorted(given)},
                )
        return {"status": True, "data": _settings(organizationId, share)}

    return routes


def _settings(organization_id: str, share: FairShare) -> dict[str, Any]:
    return {
        "organizationId": organization_id,
        "wakeRatePerS": share.wake_rate_per_s,
        "fairWeight": share.weight,
    }
