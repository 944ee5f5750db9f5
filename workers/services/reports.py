"""Device reports from the MDM check-in server: what each means, and the retry policy for postponements."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from models.enums import Actor
from models.reports import Report
from models.statuses import Status
from models.store import Effects, ErrorInfo, Move, TransitionResult, get_deployment, transition
from models.tables import Deployment, Organization
from models.types import utcnow
from workers.policy import KindPolicy, RetryPolicy, next_attempt_at
from workers.services import wording

log = logging.getLogger(__name__)

_POSTPONING = frozenset({Report.not_now, Report.agent_not_started})


@dataclass(frozen=True)
class DeviceReport:
    """What the check-in server relays: the report, the device's reason (NotNow) or its ErrorChain."""

    deployment_id: str
    report: Report
    reason: str | None = None
    error_chain: Sequence[Mapping[str, Any]] | None = None


def record_device_report(
    session: Session, report: DeviceReport, *, policy: RetryPolicy, now: datetime | None = None
) -> TransitionResult:
    """Apply `report`; a report that does not fit the deployment's status comes back as a refusal."""
    now = now or utcnow()
    move = Move.for_report(report.report)
    # Only a postponement needs the row (its counters and age); every other report is one conditional UPDATE.
    deployment = (
        get_deployment(session, deployment_id=report.deployment_id) if report.report in _POSTPONING else None
    )
    if deployment is None or deployment.kind not in move.targets:
        return transition(session, ids=[report.deployment_id], move=move, actor=Actor.device,
                          effects=_effects(report), now=now)  # fmt: skip
    organization = session.get(Organization, deployment.organization_id)
    limits = policy.overridden(organization.retry_policy if organization else None)[deployment.kind]
    return _postpone(session, deployment, report, limits, now)


def _effects(report: DeviceReport) -> Effects:
    if report.report is Report.error:
        error = ErrorInfo(
            code="device_error",
            message=wording.device_error(report.error_chain, report.reason),
            detail={"error_chain": list(report.error_chain or []), "reason": report.reason},
        )
        return Effects(error=error, device_reason=report.reason, reset_pushes=True)
    return Effects(device_reason=report.reason, reset_pushes=True)


def _postpone(
    session: Session, deployment: Deployment, report: DeviceReport, limits: KindPolicy, now: datetime
) -> TransitionResult:
    """Postponed (or Waiting for startup) until the policy's next try; Failed once it allows no more."""
    postpones = deployment.postpone_count + 1
    retry_at = next_attempt_at(limits, postpones=postpones, created_at=deployment.created_at, now=now)
    reason = report.reason or ("agent app not started" if report.report is Report.agent_not_started else None)
    if retry_at is not None:
        move = Move.for_report(report.report)
        effects = Effects(
            next_attempt_at=retry_at, device_reason=reason, count_postpone=True, reset_pushes=True
        )
    else:
        move = Move.to(Status.failed)
        message = wording.postponed_too_often(postpones, now - deployment.created_at, reason)
        error = ErrorInfo(code="postponed_too_often", message=message, detail={"postpones": postpones})
        effects = Effects(error=error, device_reason=reason, count_postpone=True, reset_pushes=True)
    return transition(session, ids=[deployment.id], move=move, actor=Actor.device, effects=effects, now=now)
