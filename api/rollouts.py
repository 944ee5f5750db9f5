"""Rollouts over HTTP: the deployments of one create request, followed together (counts, push state, rate,
ETA), listed newest first, and cancelled or retried as a whole."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.auth import Caller, EntityId, OrganizationId
from api.deployments import OutcomeAnswer
from api.errors import ENTITY_NOT_FOUND, ApiError
from api.representation import outcome, rollout
from models.database import Session
from models.enums import Actor
from models.ids import ID_PATTERN
from models.store import TransitionResult
from models.store.rollouts import (
    RATE_WINDOW_S,
    count_rollouts,
    get_rollout,
    recent_rollouts,
    rollout_progress,
)
from models.tables import Rollout
from workers.actors import Actors
from workers.services.operations import cancel_rollout, retry_rollout


class HeldReason(BaseModel):
    reason: str
    count: int


class PushState(BaseModel):
    """The rollout's deployments by their pushes; the four counts add up to the deployments."""

    neverPushed: int = Field(description="No push has woken the device yet (including one turned away).")
    pushed: int = Field(description="Woken by a push, and not waiting to be pushed again.")
    retrying: int = Field(
        description="Queued, pushed before, and waiting to be pushed again: the provider turned the last "
        "push away, or the device did not check in and the re-push sweep took it again."
    )
    held: int = Field(description="Queued and held until an organization's credential is fixed.")
    heldReasons: list[HeldReason] = Field(description="The held ones by reason, the most first.")


class RolloutOut(BaseModel):
    id: str
    organizationId: str
    kind: str = Field(description="The deployments' kind, or `mixed`.")
    total: int = Field(description="Deployments the create request made.")
    createdAt: datetime
    createdBy: str | None = Field(description="The API token's id (never a secret), `cli` or `demo`.")
    counts: dict[str, int] = Field(description="Deployments per status, as the console writes it.")
    finished: int = Field(description="Deployments in a final status of their kind.")
    done: bool = Field(description="Every deployment is in a final status.")
    push: PushState
    firstPushAt: datetime | None = Field(
        description="The earliest and latest push the deployments keep (a re-push replaces a deployment's)."
    )
    lastPushAt: datetime | None
    ratePerSecond: float | None = Field(
        description=f"Deployments pushed per second over the last {RATE_WINDOW_S:g} s, or since the first "
        "push when that was more recent; null before the first push."
    )
    etaSeconds: int | None = Field(
        description="Seconds until the deployments still to push (never pushed or retrying, not held) are "
        "pushed at `ratePerSecond`, or at the organization's wake-up rate when it is paced and that is "
        "slower: their number divided by the rate. 0 when none is left to push; null when the rate is "
        "unknown or 0 (none pushed in the window, e.g. all left are held) and the organization unpaced."
    )
    measuredAt: datetime = Field(description="When these figures were counted.")


class RolloutAnswer(BaseModel):
    status: bool = True
    data: RolloutOut


class RolloutPage(BaseModel):
    items: list[RolloutOut]
    next: str | None = Field(description="The cursor of the next (older) page; null on the last one.")
    total: int = Field(description="The organization's rollouts, every page together.")


class RolloutPageAnswer(BaseModel):
    status: bool = True
    data: RolloutPage


def router(actors: Actors) -> APIRouter:
    routes = APIRouter(prefix="/v1/organizations/{organizationId}", tags=["rollouts"])
    app = actors.app

    @routes.get("/rollouts/{rolloutId}", response_model=RolloutAnswer)
    def get(organizationId: OrganizationId, rolloutId: EntityId, caller: Caller) -> dict[str, Any]:
        """Required permission: `mdm.deployment.get`. Counts per status, push state, first and last push,
        rate and ETA."""
        caller.require(organizationId, "mdm.deployment.get")
        with app.session() as session:
            found = _own_rollout(session, organizationId, rolloutId)
            [progress] = rollout_progress(session, rollouts=[found])
        return {"status": True, "data": rollout(progress)}

    @routes.get("/rollouts", response_model=RolloutPageAnswer)
    def listing(
        *,
        organizationId: OrganizationId,
        caller: Caller,
        cursor: Annotated[str | None, Query(pattern=ID_PATTERN.pattern)] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        """Required permission: `mdm.deployment.get`. The organization's rollouts, newest first, each with
        its progress; `limit` a page, the next (older) page from `cursor`; `total` counts them all."""
        caller.require(organizationId, "mdm.deployment.get")
        with app.session() as session:
            page = recent_rollouts(session, organization_id=organizationId, after=cursor, limit=limit + 1)
            progress = rollout_progress(session, rollouts=page[:limit])
            total = count_rollouts(session, organization_id=organizationId)
        return {
            "status": True,
            "data": {
                "items": [rollout(p) for p in progress],
                "next": page[limit - 1].id if len(page) > limit else None,
                "total": total,
            },
        }

    @routes.post("/rollouts/{rolloutId}/cancel", response_model=OutcomeAnswer)
    def cancel(organizationId: OrganizationId, rolloutId: EntityId, caller: Caller) -> dict[str, Any]:
        """Required permission: `mdm.deployment.cancel`. Cancels every deployment of the rollout the device
        has not started, a few thousand per transaction; those already past it are not listed, one that
        moved meanwhile is refused with the reason."""
        caller.require(organizationId, "mdm.deployment.cancel")
        with app.session() as session:
            _own_rollout(session, organizationId, rolloutId)
        results = list(cancel_rollout(app.session, rollout_id=rolloutId, actor=Actor.api, by=caller.actor))
        return {"status": True, "data": outcome(results)}

    @routes.post("/rollouts/{rolloutId}/retry", response_model=OutcomeAnswer)
    def retry(organizationId: OrganizationId, rolloutId: EntityId, caller: Caller) -> dict[str, Any]:
        """Required permission: `mdm.deployment.retry`. Every Failed (and Error distributing) deployment of
        the rollout back to Queued, afresh, and enqueued, a few thousand per transaction; one that moved
        meanwhile is refused with the reason."""
        caller.require(organizationId, "mdm.deployment.retry")
        with app.session() as session:
            _own_rollout(session, organizationId, rolloutId)
        results: list[TransitionResult] = []
        for result in retry_rollout(app.session, rollout_id=rolloutId, actor=Actor.api, by=caller.actor):
            actors.enqueue_ids([a.deployment_id for a in result.applied])
            results.append(result)
        return {"status": True, "data": outcome(results)}

    return routes


def _own_rollout(session: Session, organization_id: str, rollout_id: str) -> Rollout:
    """The organization's rollout; another's is as missing as one that does not exist (404)."""
    found = get_rollout(session, rollout_id=rollout_id)
    if found is None or found.organization_id != organization_id:
        raise ApiError(ENTITY_NOT_FOUND)
    return found
