"""The HTTP API (`mdmq api`, the Procfile's `web`): FastAPI, every answer in the JSON envelope."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api import audit, credentials, deployments, devices, idempotency, ops, organizations, rollouts
from api.access_log import AccessLog
from api.auth import Caller, EntityId, OrganizationId
from api.errors import ENTITY_NOT_FOUND, RESPONSES, ApiError, install, without_422
from api.limits import BodyLimit
from api.metrics import RequestMetrics
from api.strict_json import StrictJson
from models.database import DRIVER_ERRORS, database_cause
from models.enums import Provider
from models.store import get_deployment
from models.store.ops import get_device, get_receipt, ping
from models.tables import PushReceipt
from workers.actors import declare_actors
from workers.app import App
from workers.broker import broker_cause

log = logging.getLogger(__name__)


class PushStatus(BaseModel):
    """What the push provider last said about the command's push; a field it gave nothing for is absent."""

    delivered: bool | None = None
    pendingDevices: int | None = None
    expiresAt: str | None = None
    sentAt: str | None = None


class PushStatusAnswer(BaseModel):
    status: bool = True
    data: PushStatus


class Health(BaseModel):
    status: bool = True
    data: dict[str, str]


def create_app(app: App | None = None) -> FastAPI:
    mdmq = app or App()
    checks = mdmq.key_checks  # built here, once: its pool of processes starts at the first upload

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        checks.close()

    settings = mdmq.settings
    docs = settings.serves_api_docs  # off in production unless MDMQ_API_DOCS turns them on
    api = FastAPI(
        title="mdmq",
        version="1",
        summary="Deployments to managed devices, and their push status.",
        responses=RESPONSES,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        lifespan=lifespan,
    )
    without_422(api)
    api.add_middleware(StrictJson)  # inside BodyLimit: reads only bodies it let through
    api.add_middleware(
        BodyLimit, max_bytes=settings.api_max_body_bytes, timeout_s=settings.api_body_timeout_s
    )
    api.add_middleware(RequestMetrics)  # outside the limits: it counts the 413s too
    api.add_middleware(AccessLog)  # added last, so outermost: its request id is on every line inside
    api.state.mdmq = mdmq
    install(api)
    idempotency.install(api)
    actors = declare_actors(mdmq)  # to send: dispatch after a create or a retry
    api.include_router(deployments.router(actors))
    api.include_router(deployments.reports_router(actors))
    api.include_router(rollouts.router(actors))
    api.include_router(devices.router(actors))
    api.include_router(credentials.router(actors))
    api.include_router(audit.router(mdmq))
    api.include_router(organizations.router(mdmq))
    api.include_router(ops.router(mdmq))

    @api.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> dict[str, Any]:
        """The process is up. On the event loop: it needs no thread of the pool that blocking routes use."""
        return {"status": True, "data": {"process": "up"}}

    @api.get(
        "/readyz",
        response_model=Health,
        tags=["health"],
        responses={503: {"model": Health, "description": "A dependency is down: `data` says which, and why"}},
    )
    def readyz(request: Request) -> Any:
        """The database and the broker answer; else 503, each dependency `up` or `down: <cause>`."""
        mdmq: App = request.app.state.mdmq
        causes = {"database": _database_cause(mdmq), "broker": broker_cause(mdmq.broker)}
        data = {name: "up" if cause is None else f"down: {cause}" for name, cause in causes.items()}
        down = {name: cause for name, cause in causes.items() if cause is not None}
        if not down:
            return {"status": True, "data": data}
        log.warning("not ready: %s", "; ".join(f"{name} {cause}" for name, cause in down.items()))
        return JSONResponse({"status": False, "data": data}, status_code=503)

    @api.get(
        "/v1/organizations/{organizationId}/mdm/aosp/enterprise/devices/{aosDeviceId}/commands/{aosCommandId}/push-status",
        response_model=PushStatusAnswer,
        response_model_exclude_none=True,
        tags=["aosp"],
        summary="Get AOS command push delivery status",
    )
    def aosp_push_status(
        request: Request,
        caller: Caller,
        organizationId: OrganizationId,
        aosDeviceId: EntityId,
        aosCommandId: EntityId,
    ) -> dict[str, Any]:
        """Required permission: `mdm.aosp.command.get`. The delivery status the push provider last reported
        for the command's push (polled by the scheduler); `data` is empty until the push is sent."""
        caller.require(organizationId, "mdm.aosp.command.get")
        mdmq: App = request.app.state.mdmq
        with mdmq.session() as session:
            deployment = get_deployment(session, deployment_id=aosCommandId)
            device = get_device(session, device_id=aosDeviceId)
            if (
                deployment is None
                or device is None
                or deployment.organization_id != organizationId
                or deployment.device_id != device.id
                or device.provider is not Provider.aosp
            ):
                raise ApiError(ENTITY_NOT_FOUND)
            receipt = get_receipt(session, receipt_id=deployment.receipt_id)
            return {"status": True, "data": _push_status(receipt)}

    return api


def _push_status(receipt: PushReceipt | None) -> dict[str, Any]:
    if receipt is None:
        return {}
    return {
        "delivered": receipt.delivered,
        "pendingDevices": receipt.pending_devices,
        "expiresAt": _time(receipt.expires_at),
        "sentAt": _time(receipt.sent_at),
    }


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _database_cause(mdmq: App) -> str | None:
    """Why the database does not answer, in one line; None when it does."""
    try:
        with mdmq.session() as session:
            ping(session)
    except DRIVER_ERRORS as e:
        return database_cause(e)
    return None
