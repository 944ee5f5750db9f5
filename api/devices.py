"""Devices over HTTP: enroll or update one (Apple's TokenUpdate), import up to 10,000 at a time, read them
(never their token or push magic), list them, and unenroll them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from api import idempotency
from api.auth import Caller, EntityId, OrganizationId
from api.errors import CONFLICT, ENTITY_NOT_FOUND, INVALID_REQUEST, TOPIC_CHANGE_REFUSED, ApiError
from api.idempotency import Once, idempotent
from api.representation import device as device_out
from models.database import Session
from models.enums import Platform, Provider, TokenState
from models.ids import ID_PATTERN
from models.store.audit import DEVICE_UNENROLLED, IDS_KEPT, record_audit_event
from models.store.enrollment import (
    DeviceFilter,
    Enrolled,
    Enrollment,
    EnrollRefusal,
    enroll_devices,
    get_device,
    last_pushes,
    list_devices,
    unenroll_device,
)
from workers.actors import Actors
from workers.services.devices import MAX_PER_BATCH, DeviceFields, Imported, enrollment, import_devices

EnrolledFilter = Literal["enrolled", "unenrolled", "all"]
ManageOnce = Annotated[Once, idempotent("mdm.device.manage")]


class TokenOut(BaseModel):
    state: str = Field(
        description="`valid`, or `invalid` with the provider's reason: the token itself is never shown."
    )
    reason: str | None
    providerStatus: int | None
    invalidAt: datetime | None
    ambiguous: bool = Field(
        description="Invalidated by an answer the providers also give a misconfigured credential."
    )


class DeviceOut(BaseModel):
    id: str
    organizationId: str
    platform: str
    provider: str
    topic: str | None
    labels: list[str]
    token: TokenOut
    enrolled: bool
    unenrolledAt: datetime | None
    lastPushAt: datetime | None = Field(description="The last push sent to wake it, for any deployment.")
    lastReportAt: datetime | None = Field(description="The last report the device sent.")
    createdAt: datetime
    updatedAt: datetime | None


class DeviceAnswer(BaseModel):
    status: bool = True
    data: DeviceOut


class DevicePage(BaseModel):
    items: list[DeviceOut]
    next: str | None = Field(description="The cursor of the next page; null on the last one.")


class DevicePageAnswer(BaseModel):
    status: bool = True
    data: DevicePage


class Batch(BaseModel):
    devices: list[Any] = Field(
        min_length=1,
        max_length=MAX_PER_BATCH,
        description="Rows of `id` and the fields of PUT; each is checked on its own.",
    )


class RowRefused(BaseModel):
    index: int
    id: str | None
    field: str
    reason: str


class BatchOut(BaseModel):
    stored: int
    created: int
    updated: int
    refused: list[RowRefused] = Field(
        description="Each refused row: its index in `devices`, field and reason."
    )


class BatchAnswer(BaseModel):
    status: bool = True
    data: BatchOut


class Unenrolled(BaseModel):
    id: str
    cancelled: list[str] = Field(description="Its deployments it had not started, now Cancelled.")


class UnenrolledAnswer(BaseModel):
    status: bool = True
    data: Unenrolled


def router(actors: Actors) -> APIRouter:
    routes = APIRouter(prefix="/v1/organizations/{organizationId}", tags=["devices"])
    app = actors.app

    @routes.put("/devices/{deviceId}", response_model=DeviceAnswer)
    def put(
        organizationId: OrganizationId,
        deviceId: EntityId,
        body: DeviceFields,
        caller: Caller,
        response: Response,
    ) -> dict[str, Any]:
        """Required permission: `mdm.device.manage`. Enrolls the device (201), or updates it as Apple's
        TokenUpdate does (200): the new token and push magic replace the old, an invalidated token is valid
        again, and its deployments that waited on the old token go out. An Apple device keeps the topic it
        enrolled with: another is refused (409, 4019) until it is unenrolled. A token the provider could
        never take is a 400 naming the field."""
        caller.require(organizationId, "mdm.device.manage")
        wanted = enrollment(deviceId, body)
        if isinstance(wanted, tuple):
            raise ApiError(INVALID_REQUEST, f"{wanted[0]}: {wanted[1]}")
        with app.session() as session:
            enrolled = _enroll_one(session, organizationId, wanted)
            stored = get_device(session, organization_id=organizationId, device_id=deviceId)
            assert stored is not None
            data = device_out(stored, last_push=last_pushes(session, device_ids=[deviceId]).get(deviceId))
        actors.enqueue_ids(list(enrolled.release))
        response.status_code = 201 if enrolled.created else 200
        return {"status": True, "data": data}

    @routes.post("/devices:batch", response_model=BatchAnswer, responses=idempotency.RESPONSES)
    def batch(
        organizationId: OrganizationId, body: Batch, caller: Caller, once: ManageOnce
    ) -> dict[str, Any]:
        """Required permission: `mdm.device.manage`. Up to 10,000 devices enrolled or updated as PUT does
        each; the good rows are stored, and each bad one is answered with its index, field and reason. Safe
        to retry with an `Idempotency-Key`: the retry gets the first answer, not the rows' updates."""
        caller.require(organizationId, "mdm.device.manage")
        with app.session() as session:
            imported = import_devices(session, organization_id=organizationId, rows=body.devices)
            answer = once.keep(session, {"status": True, "data": _batch_answer(imported)})
        actors.enqueue_ids(list(imported.enrolled.release))
        return answer

    @routes.get("/devices/{deviceId}", response_model=DeviceAnswer)
    def get(organizationId: OrganizationId, deviceId: EntityId, caller: Caller) -> dict[str, Any]:
        """Required permission: `mdm.device.get`. The device, its token state with the invalidation's
        reason, its last push and last report; never its token or push magic."""
        caller.require(organizationId, "mdm.device.get")
        with app.session() as session:
            device = get_device(session, organization_id=organizationId, device_id=deviceId)
            if device is None:
                raise ApiError(ENTITY_NOT_FOUND)
            last_push = last_pushes(session, device_ids=[deviceId]).get(deviceId)
            return {"status": True, "data": device_out(device, last_push=last_push)}

    @routes.get("/devices", response_model=DevicePageAnswer)
    def listing(
        *,
        organizationId: OrganizationId,
        caller: Caller,
        platform: Platform | None = None,
        provider: Provider | None = None,
        tokenState: TokenState | None = None,
        label: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        enrolled: EnrolledFilter = "enrolled",
        cursor: Annotated[str | None, Query(pattern=ID_PATTERN.pattern)] = None,
        limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    ) -> dict[str, Any]:
        """Required permission: `mdm.device.get`. Filtered by platform, provider, token state, label and
        enrollment (`enrolled` by default, `unenrolled`, `all`); in id order, `limit` a page, the next page
        from `cursor`."""
        caller.require(organizationId, "mdm.device.get")
        which = {"enrolled": True, "unenrolled": False, "all": None}[enrolled]
        where = DeviceFilter(platform, provider, tokenState, label, which)
        with app.session() as session:
            page = list_devices(
                session, organization_id=organizationId, where=where, after=cursor, limit=limit + 1
            )
            shown = page[:limit]
            pushed = last_pushes(session, device_ids=[d.id for d in shown])
            items = [device_out(d, last_push=pushed.get(d.id)) for d in shown]
        return {
            "status": True,
            "data": {"items": items, "next": page[limit - 1].id if len(page) > limit else None},
        }

    @routes.delete("/devices/{deviceId}", response_model=UnenrolledAnswer)
    def unenroll(organizationId: OrganizationId, deviceId: EntityId, caller: Caller) -> dict[str, Any]:
        """Required permission: `mdm.device.manage`. Unenrolls the device, a soft delete: its row stays for
        history; its deployments it has not started (Queued, Postponed, Waiting for startup, Error
        distributing) end Cancelled with the error "device unenrolled", started ones run to their own end,
        and nothing is pushed to it again. Enrolling it again (PUT) takes it back, under any topic."""
        caller.require(organizationId, "mdm.device.manage")
        with app.session() as session:
            result = unenroll_device(session, organization_id=organizationId, device_id=deviceId)
            if result is None:
                raise ApiError(ENTITY_NOT_FOUND)
            cancelled = [a.deployment_id for a in result.applied]
            detail = {"device": deviceId, "cancelled": len(cancelled), "ids": cancelled[:IDS_KEPT]}
            record_audit_event(
                session,
                organization_id=organizationId,
                actor=caller.actor,
                action=DEVICE_UNENROLLED,
                detail=detail,
            )
        return {"status": True, "data": {"id": deviceId, "cancelled": cancelled}}

    return routes


def _enroll_one(session: Session, organization_id: str, wanted: Enrollment) -> Enrolled:
    """The device enrolled or updated; its refusal as the API's error."""
    enrolled = enroll_devices(session, organization_id=organization_id, devices=[wanted])
    if enrolled.refused:
        refused = enrolled.refused[0]
        if refused.reason is EnrollRefusal.topic_change:
            raise ApiError(TOPIC_CHANGE_REFUSED, refused.message)
        raise ApiError(CONFLICT, f"deviceId: {refused.message}")
    return enrolled


def _batch_answer(imported: Imported) -> dict[str, Any]:
    refused = [
        {"index": p.index, "id": p.device_id, "field": p.field, "reason": p.reason} for p in imported.problems
    ]
    return {
        "stored": imported.stored,
        "created": len(imported.enrolled.created),
        "updated": len(imported.enrolled.updated),
        "refused": refused,
    }
