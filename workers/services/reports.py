"""Device reports from the MDM check-in server: what each means, and the retry policy for postponements."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from models.database import Session
from models.enums import Actor
from models.reports import Report
from models.statuses import Status
from models.store import (
    Effects,
    ErrorInfo,
    Move,
    TransitionResult,
    get_deployment,
    lock_deployments,
    transition,
)
from models.store.organizations import retry_overrides
from models.tables import Deployment
from models.types import utcnow
from workers.policy import KindPolicy, RetryPolicy, next_attempt_at
from workers.services import wording

log = logging.getLogger(__name__)

_POSTPONING = frozenset({Report.not_now, Report.agent_not_started})


@dataclass(frozen=True)
class DeviceReport:
    """What the check-in server relays: the report, the device's reason (NotNow) or its ErrorChain, and when
    the server received it (`reported_at`): a report older than one applied already changes nothing."""

    deployment_id: str
    report: Report
    reason: str | None = None
    error_chain: Sequence[Mapping[str, Any]] | None = None
    reported_at: datetime | None = None


def record_device_report(
    session: Session, report: DeviceReport, *, policy: RetryPolicy, now: datetime | None = None
) -> TransitionResult:
    """Apply `report`; a report that does not fit the deployment's status comes back as a refusal."""
    now = now or utcnow()
    move = Move.for_report(report.report).reported(report.reported_at)
    # Only a postponement needs the row (its counters and age); every other report is one conditional UPDATE.
    deployment = (
        get_deployment(session, deployment_id=report.deployment_id) if report.report in _POSTPONING else None
    )
    if deployment is None or deployment.kind not in move.targets:
        return transition(session, ids=[report.deployment_id], move=move, actor=Actor.device,
                          effects=_effects(report), now=now)  # fmt: skip
    overrides = retry_overrides(session, organization_ids=[deployment.organization_id])
    limits = policy.overridden(overrides.get(deployment.organization_id))[deployment.kind]
    return _postpone(session, deployment, report, limits, now)


def record_device_reports(
    session: Session, reports: Sequence[DeviceReport], *, policy: RetryPolicy, now: datetime | None = None
) -> list[TransitionResult]:
    """Apply many reports, each deployment's in the order given, as one report at a time would, but set-based:
    the n-th reports of all deployments form a round, and within a round the reports that say the same thing
    move together in one UPDATE. A device's check-in (fetched, processing, acknowledged for each of its
    commands) costs three statements instead of three per command."""
    now = now or utcnow()
    lock_deployments(session, ids=[report.deployment_id for report in reports])
    rounds: list[list[DeviceReport]] = []
    seen: Counter[str] = Counter()
    for report in reports:
        n = seen[report.deployment_id]
        seen[report.deployment_id] += 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(report)
    results: list[TransitionResult] = []
    for round_ in rounds:
        alike: dict[tuple[Report, str | None, str, datetime | None], list[DeviceReport]] = {}
        for report in round_:
            if report.report in _POSTPONING:  # needs its own row: counters, age and organization policy
                results.append(record_device_report(session, report, policy=policy, now=now))
                continue
            chain = json.dumps(report.error_chain, sort_keys=True, default=str)
            alike.setdefault((report.report, report.reason, chain, report.reported_at), []).append(report)
        for group in alike.values():
            ids = [report.deployment_id for report in group]
            move = Move.for_report(group[0].report).reported(group[0].reported_at)
            effects = _effects(group[0])
            results.append(
                transition(session, ids=ids, move=move, actor=Actor.device, effects=effects, now=now)
            )
    return results


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
        move = Move.for_report(report.report).reported(report.reported_at)
        effects = Effects(
            next_attempt_at=retry_at, device_reason=reason, count_postpone=True, reset_pushes=True
        )
    else:
        move = Move.to(Status.failed).reported(report.reported_at)
        message = wording.postponed_too_often(postpones, now - deployment.created_at, reason)
        error = ErrorInfo(code="postponed_too_often", message=message, detail={"postpones": postpones})
        effects = Effects(error=error, device_reason=reason, count_postpone=True, reset_pushes=True)
    return transition(session, ids=[deployment.id], move=move, actor=Actor.device, effects=effects, now=now)
