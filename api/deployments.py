"""Deployments over HTTP: bulk create (enqueued after the commit), get with history and receipts, cancel,
retry, and the device reports of the MDM check-in server."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, Field

from api import idempotency
from api.auth import Caller, EntityId, OrganizationId
from api.errors import ENTITY_NOT_FOUND, INVALID_REQUEST, ApiError
from api.idempotency import Once, idempotent
from api.representation import deployment_detail, deployment_summary, outcome
from api.text import StoredText
from models.enums import Actor
from models.ids import ID_PATTERN
from models.reports import UnknownReport, parse_report
from models.statuses import Kind, Status
from models.store import NewDeployment, deployment_history, get_deployment
from models.store.attempts import push_attempts
from models.store.deployments import (
    DeploymentFilter,
    UnknownDevices,
    count_deployments,
    list_deployments,
)
from models.store.ops import get_receipt, own_deployment_ids
from models.types import utcnow
from workers.actors import Actors, Created
from workers.services.operations import cancel_deployments, retry_deployments
from workers.services.reports import CheckInReport, DeviceReport, record_check_in

MAX_PER_REQUEST = 10_000
CreateOnce = Annotated[Once, idempotent("mdm.deployment.create")]
DeviceId = Annotated[str, Field(pattern=ID_PATTERN.pattern)]  # a 24-hex id in a body


class NewDeploymentIn(BaseModel):
    deviceId: DeviceId
    kind: Kind
    payload: dict[str, Any] = Field(default_factory=dict)
    urgent: bool = False


class BulkCreate(BaseModel):
    deployments: list[NewDeploymentIn] = Field(min_length=1, max_length=MAX_PER_REQUEST)


class CreatedData(BaseModel):
    rolloutId: str = Field(description="The rollout these deployments make: follow it at `/rollouts/{id}`.")
    ids: list[str]


class CreatedAnswer(BaseModel):
    status: bool = True
    data: CreatedData


class IdList(BaseModel):
    ids: list[DeviceId] = Field(min_length=1, max_length=MAX_PER_REQUEST)


class Outcome(BaseModel):
    applied: list[str]
    refused: list[dict[str, str]] = Field(
        description="`{id, reason}` for each refused one; reason: `unknown_deployment`, `not_allowed`, "
        "`not_applicable`, `out_of_order`, and for device reports `not_this_device` and `reported_in_future`."
    )


class OutcomeAnswer(BaseModel):
    status: bool = True
    data: Outcome


class Event(BaseModel):
    fromStatus: str | None
    toStatus: str
    at: datetime
    actor: str
    detail: dict[str, Any] | None


class Receipt(BaseModel):
    provider: str
    sentAt: datetime
    expiresAt: datetime | None
    delivered: bool | None
    pendingDevices: int | None


class PushAttemptOut(BaseModel):
    at: datetime = Field(description="When the push was claimed and sent.")
    provider: str
    outcome: str = Field(
        description="Whose problem the answer is: `transient` (retried), `credential` or `config` (held), "
        "`permanent`, `dead_token` or `payload_rejected` (undeliverable)."
    )
    status: int | None = Field(description="The provider's HTTP status; null when no answer came.")
    reason: str | None = Field(description="The provider's reason, as it gave it.")
    nextAttemptAt: datetime | None = Field(description="When the push goes again; null: it does not.")


class DeploymentOut(BaseModel):
    id: str
    organizationId: str
    deviceId: str
    kind: str
    status: str
    held: str | None
    attempts: int
    postpones: int
    nextAttemptAt: datetime | None
    error: dict[str, Any] | None
    createdAt: datetime
    updatedAt: datetime
    history: list[Event]
    receipt: Receipt | None
    pushAttempts: list[PushAttemptOut] = Field(
        description="The pushes the provider did not accept, newest first (at most 20); accepted ones are "
        "the receipt's."
    )


class DeploymentSummary(BaseModel):
    id: str
    organizationId: str
    deviceId: str
    kind: str
    status: str
    held: str | None
    error: str | None
    updatedAt: datetime


class Page(BaseModel):
    items: list[DeploymentSummary]
    next: str | None = Field(description="The cursor of the next page; null on the last one.")
    total: int = Field(description="The deployments that match the filter, every page together.")


class PageAnswer(BaseModel):
    status: bool = True
    data: Page


class DeploymentAnswer(BaseModel):
    status: bool = True
    data: DeploymentOut


class ReportIn(StoredText):
    deviceId: DeviceId = Field(description="The device that reports: it must own the deployment.")
    deploymentId: Annotated[str, Field(pattern=ID_PATTERN.pattern)]
    report: str = Field(max_length=64)
    reason: str | None = Field(default=None, max_length=1_000)
    errorChain: list[dict[str, Any]] | None = Field(default=None, max_length=50)
    reportedAt: AwareDatetime | None = Field(
        default=None,
        description="When the check-in server received the report, with its time zone; the time of the "
        "request when absent. More than MDMQ_REPORT_MAX_LEAD_S ahead of the server's clock: refused "
        "(`reported_in_future`); a smaller lead counts as the server's now.",
    )


class Reports(BaseModel):
    """One device check-in's reports, in the order the device gave them."""

    reports: list[ReportIn] = Field(min_length=1, max_length=1_000)


def router(actors: Actors) -> APIRouter:
    routes = APIRouter(prefix="/v1/organizations/{organizationId}", tags=["deployments"])
    app = actors.app

    @routes.post(
        "/deployments", status_code=202, response_model=CreatedAnswer, responses=idempotency.RESPONSES
    )
    def create(
        organizationId: OrganizationId, body: BulkCreate, caller: Caller, once: CreateOnce
    ) -> dict[str, Any]:
        """Required permission: `mdm.deployment.create`. Up to 10,000 deployments, all or nothing: one device
        id that is not this organization's creates nothing, and the answer names it. Queued, and enqueued
        once committed (202 even when the broker is away: the relay sends them when it is back), as one
        rollout; its id, and the ids in the order given. Safe to retry with an `Idempotency-Key`."""
        caller.require(organizationId, "mdm.deployment.create")
        wanted = [NewDeployment(d.deviceId, d.kind, d.payload, d.urgent) for d in body.deployments]
        try:
            created = actors.create(
                organizationId,
                wanted,
                created_by=caller.actor,
                before_commit=lambda s, created: once.keep(s, _created(created)),
            )
        except UnknownDevices as e:
            raise ApiError(INVALID_REQUEST, f"unknown device id(s): {', '.join(e.device_ids[:20])}") from None
        return _created(created)

    @routes.get("/deployments/{deploymentId}", response_model=DeploymentAnswer)
    def get(organizationId: OrganizationId, deploymentId: EntityId, caller: Caller) -> dict[str, Any]:
        """Required permission: `mdm.deployment.get`. Status, error detail, history, push receipt and failed
        pushes. Queued after a failed push: `error` is that push's answer, `nextAttemptAt` the retry."""
        caller.require(organizationId, "mdm.deployment.get")
        with app.session() as session:
            deployment = get_deployment(session, deployment_id=deploymentId)
            if deployment is None or deployment.organization_id != organizationId:
                raise ApiError(ENTITY_NOT_FOUND)
            history = deployment_history(session, deployment_id=deploymentId)
            receipt = get_receipt(session, receipt_id=deployment.receipt_id)
            attempts = push_attempts(session, deployment_id=deploymentId)
            return {"status": True, "data": deployment_detail(deployment, history, receipt, attempts)}

    @routes.get("/deployments", response_model=PageAnswer)
    def listing(
        *,
        organizationId: OrganizationId,
        caller: Caller,
        kind: Kind | None = None,
        status: Annotated[str | None, Query(max_length=64)] = None,
        device: Annotated[str | None, Query(pattern=ID_PATTERN.pattern)] = None,
        held: bool | None = None,
        stuck: bool = False,
        cursor: Annotated[str | None, Query(pattern=ID_PATTERN.pattern)] = None,
        limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    ) -> dict[str, Any]:
        """Required permission: `mdm.deployment.get`. Filtered by kind, status (as the console writes it),
        device, held, stuck (unchanged for MDMQ_STUCK_AFTER_S); in creation order, `limit` a page, the next
        page from `cursor`; `total` counts every match."""
        caller.require(organizationId, "mdm.deployment.get")
        wanted_status = None
        if status is not None:
            try:
                wanted_status = Status(status)
            except ValueError:
                raise ApiError(INVALID_REQUEST, f"status: not a status: {status!r}") from None
        stuck_since = utcnow() - timedelta(seconds=app.settings.stuck_after_s) if stuck else None
        where = DeploymentFilter(kind, wanted_status, device, held, stuck_since)
        with app.session() as session:
            page = list_deployments(
                session, organization_id=organizationId, where=where, after=cursor, limit=limit + 1
            )
            total = count_deployments(session, organization_id=organizationId, where=where)
        items = [deployment_summary(d) for d in page[:limit]]
        next_page = page[limit - 1].id if len(page) > limit else None
        return {"status": True, "data": {"items": items, "next": next_page, "total": total}}

    @routes.post("/deployments/cancel", response_model=OutcomeAnswer)
    def cancel(organizationId: OrganizationId, body: IdList, caller: Caller) -> dict[str, Any]:
        """Required permission: `mdm.deployment.cancel`. Cancels what has not started; says why not for
        the rest."""
        caller.require(organizationId, "mdm.deployment.cancel")
        with app.session() as session:
            ids = own_deployment_ids(session, organization_id=organizationId, ids=body.ids)
            result = cancel_deployments(session, ids=ids, actor=Actor.api, by=caller.actor)
        return {"status": True, "data": outcome([result], unknown=_unknown(body.ids, ids))}

    @routes.post("/deployments/retry", response_model=OutcomeAnswer)
    def retry(organizationId: OrganizationId, body: IdList, caller: Caller) -> dict[str, Any]:
        """Required permission: `mdm.deployment.retry`. Failed and Error distributing deployments back to
        Queued, afresh, and enqueued; says why not for the rest."""
        caller.require(organizationId, "mdm.deployment.retry")
        with app.session() as session:
            ids = own_deployment_ids(session, organization_id=organizationId, ids=body.ids)
            result = retry_deployments(session, ids=ids, actor=Actor.api, by=caller.actor)
        actors.enqueue_ids([a.deployment_id for a in result.applied])
        return {"status": True, "data": outcome([result], unknown=_unknown(body.ids, ids))}

    return routes


def reports_router(actors: Actors) -> APIRouter:
    routes = APIRouter(prefix="/v1/organizations/{organizationId}", tags=["device reports"])
    app = actors.app

    @routes.post("/device-reports", response_model=OutcomeAnswer)
    def reports(organizationId: OrganizationId, body: Reports, caller: Caller) -> dict[str, Any]:
        """Required permission: `mdm.device.report`. The MDM check-in server relays one check-in's reports,
        each naming the device that sends it. A report that does not fit (for a deployment of another device
        or none of the organization's, sent too far ahead of the server's clock, late, duplicated, for a
        cancelled deployment) changes nothing and is listed as refused with the reason; the others apply."""
        caller.require(organizationId, "mdm.device.report")
        received = utcnow()
        try:
            items = [_check_in_report(r, received) for r in body.reports]
        except UnknownReport as e:
            raise ApiError(INVALID_REQUEST, str(e)) from None
        with app.session() as session:
            results = record_check_in(
                session,
                organization_id=organizationId,
                reports=items,
                policy=app.policy,
                max_lead_s=app.settings.report_max_lead_s,
                now=received,
            )
        return {"status": True, "data": outcome(results)}

    return routes


def _created(created: Created) -> dict[str, Any]:
    return {"status": True, "data": {"rolloutId": created.rollout_id, "ids": created.ids}}


def _check_in_report(item: ReportIn, received: datetime) -> CheckInReport:
    report = parse_report(item.report)
    at = item.reportedAt or received
    device_report = DeviceReport(item.deploymentId, report, item.reason, item.errorChain, at)
    return CheckInReport(item.deviceId, device_report)


def _unknown(asked: list[str], own: Collection[str]) -> list[str]:
    """Those of `asked` that are not the organization's, once each, in the order asked."""
    mine = set(own)
    return [i for i in dict.fromkeys(asked) if i not in mine]
