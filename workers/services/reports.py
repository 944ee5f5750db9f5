"""Device reports from the MDM check-in server: each bound to the device that sends it, what each means, and
the retry policy for postponements."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from models import metrics
from models.database import Session
from models.enums import Actor
from models.reports import Report
from models.statuses import Status
from models.store import (
    Effects,
    ErrorInfo,
    Move,
    Refusal,
    RefusalReason,
    TransitionResult,
    get_deployment,
    lock_deployments,
    transition,
)
from models.store.deployments import deployment_devices
from models.store.enrollment import record_devices_seen
from models.store.organizations import retry_overrides
from models.tables import Deployment
from models.types import utcnow
from workers.policy import KindPolicy, RetryPolicy, next_attempt_at
from workers.services import wording

log = logging.getLogger(__name__)

_POSTPONING = frozenset({Report.not_now, Report.agent_not_started})


@dataclass(frozen=True)
class DeviceReport:
    """A report for one deployment: the report, the device's reason (NotNow) or its ErrorChain, and when the
    server received it (`reported_at`): a report older than one applied already changes nothing. Applied as
    it is by `record_device_report(s)`: what comes from outside is bound to its device first
    (`record_check_in`)."""

    deployment_id: str
    report: Report
    reason: str | None = None
    error_chain: Sequence[Mapping[str, Any]] | None = None
    reported_at: datetime | None = None


@dataclass(frozen=True)
class CheckInReport:
    """One report of a check-in as the check-in server relays it: the device that sends it, and the report.
    It applies only once bound to that device (`record_check_in`)."""

    device_id: str
    report: DeviceReport

    def __post_init__(self) -> None:
        at = self.report.reported_at
        if at is not None and at.utcoffset() is None:
            raise ValueError(f"reported_at {at.isoformat()} has no time zone")


@dataclass(frozen=True)
class Binding:
    """The reports of a check-in that may apply (a small lead on the server's clock taken as now), and the
    refusals of the others."""

    reports: list[DeviceReport]
    refused: list[Refusal]


def record_check_in(
    session: Session,
    *,
    organization_id: str,
    reports: Sequence[CheckInReport],
    policy: RetryPolicy,
    max_lead_s: float,
    now: datetime | None = None,
) -> list[TransitionResult]:
    """Bind each report to its device (`bind_reports`) and apply those that hold, in the order given; the
    refusals of the binding come last."""
    now = now or utcnow()
    binding = bind_reports(
        session, organization_id=organization_id, reports=reports, max_lead_s=max_lead_s, now=now
    )
    applied = (
        record_device_reports(session, binding.reports, policy=policy, now=now) if binding.reports else []
    )
    bound = {r.deployment_id for r in binding.reports}
    seen = [
        (item.device_id, min(item.report.reported_at or now, now))
        for item in reports
        if item.report.deployment_id in bound
    ]
    record_devices_seen(session, seen=seen)
    return [*applied, TransitionResult((), tuple(binding.refused))]


def bind_reports(
    session: Session,
    *,
    organization_id: str,
    reports: Sequence[CheckInReport],
    max_lead_s: float,
    now: datetime,
) -> Binding:
    """Each report on its own: refused unless its deployment is the organization's (`unknown_deployment`)
    and its device's (`not_this_device`), and sent no more than `max_lead_s` after `now`
    (`reported_in_future`). A report sent after `now` but within the lead counts as sent `now`: a later
    report stamped by the server then still applies."""
    ids = [r.report.deployment_id for r in reports]
    devices = deployment_devices(session, organization_id=organization_id, ids=ids)
    bound: list[DeviceReport] = []
    refused: list[Refusal] = []
    for item in reports:
        refusal = _binding_refusal(item, devices.get(item.report.deployment_id), now, max_lead_s)
        if refusal is not None:
            refused.append(refusal)
        elif item.report.reported_at is not None and item.report.reported_at > now:
            bound.append(replace(item.report, reported_at=now))
        else:
            bound.append(item.report)
    _observe(refused)
    return Binding(bound, refused)


def _binding_refusal(
    item: CheckInReport, owner: str | None, now: datetime, max_lead_s: float
) -> Refusal | None:
    deployment_id, at = item.report.deployment_id, item.report.reported_at
    if owner is None:
        return Refusal(deployment_id, RefusalReason.unknown_deployment, "no such deployment")
    if owner != item.device_id:
        message = f"deployment {deployment_id} is another device's, not {item.device_id}'s"
        return Refusal(deployment_id, RefusalReason.not_this_device, message)
    if at is not None and at > now + timedelta(seconds=max_lead_s):
        lead_s = (at - now).total_seconds()
        message = (
            f"report {item.report.report.value!r} was sent at {at.isoformat()}, {lead_s:.0f} s ahead of the "
            f"server's clock; at most {max_lead_s:.0f} s is taken"
        )
        return Refusal(deployment_id, RefusalReason.reported_in_future, message)
    return None


def _observe(refused: Sequence[Refusal]) -> None:
    for r in refused:
        metrics.TRANSITION_REFUSALS.labels(reason=r.reason.value, actor=Actor.device.value).inc()
        log.info(
            "device report refused: %s",
            r.message,
            extra={"deployment_id": r.deployment_id, "reason": r.reason.value},
        )


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
