"""The one way a deployment changes status: a conditional UPDATE checked against the kind's table, plus its
events, in the caller's transaction. A move that does not fit changes nothing and is returned as a refusal."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from models import metrics
from models.enums import Actor
from models.reports import Report, targets_for
from models.statuses import OPS_RETRY_FROM, STATUSES, TERMINAL, Kind, Status, allowed_sources
from models.store._sql import DEPLOYMENT, EVENT, IDS_PER_STATEMENT, chunked, one_of, run, update_deployments
from models.types import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Move:
    """Where a transition goes, per kind: `processing` means `In progress`, or `In Progress` for a lock."""

    targets: Mapping[Kind, Status]
    label: str
    ops_retry: bool = False
    # A sweep acts on rows it read a moment ago: it moves only those still in the state it read them in
    # (these statuses, and due by this time), never one that a device report changed in between.
    only_from: frozenset[Status] | None = None
    due_by: datetime | None = None
    # A device report sent at this time: it applies only where no later report has been applied.
    reported_at: datetime | None = None

    @classmethod
    def to(cls, status: Status) -> Move:
        return cls({kind: status for kind, statuses in STATUSES.items() if status in statuses}, status.value)

    @classmethod
    def for_report(cls, report: Report) -> Move:
        return cls(targets_for(report), f"report {report.value!r}")

    @classmethod
    def ops_retry_to_queued(cls) -> Move:
        return cls({kind: Status.queued for kind in Kind}, "ops retry", ops_retry=True)

    def sources(self, kind: Kind) -> frozenset[Status]:
        if self.ops_retry:
            return OPS_RETRY_FROM[kind]
        allowed = allowed_sources(kind, self.targets[kind]) if kind in self.targets else frozenset()
        return allowed & self.only_from if self.only_from is not None else allowed

    def unless_changed_since_read(self, statuses: frozenset[Status], due_by: datetime) -> Move:
        return replace(self, only_from=statuses, due_by=due_by)

    def reported(self, at: datetime | None) -> Move:
        """The move of a device report the device sent `at`: refused where a later report was applied."""
        return replace(self, reported_at=at)


@dataclass(frozen=True)
class ErrorInfo:
    """What an admin reads when hovering a Failed status: a code, a sentence, and the raw detail."""

    code: str
    message: str
    detail: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Effects:
    """What a transition writes besides the status. `next_attempt_at` is always written (None clears it)."""

    error: ErrorInfo | None = None
    next_attempt_at: datetime | None = None
    device_reason: str | None = None
    count_postpone: bool = False
    # The device answered: the pushes it did not answer are counted afresh from here.
    reset_pushes: bool = False
    detail: Mapping[str, Any] = field(default_factory=dict)

    def event_detail(self) -> dict[str, Any] | None:
        detail = dict(self.detail)
        if self.error is not None:
            detail["error_code"] = self.error.code
            detail["error_message"] = self.error.message
        if self.device_reason is not None:
            detail["device_reason"] = self.device_reason
        if self.next_attempt_at is not None:
            detail["next_attempt_at"] = self.next_attempt_at.isoformat()
        return detail or None


class RefusalReason(StrEnum):
    unknown_deployment = "unknown_deployment"  # none of the organization's deployments
    not_this_device = "not_this_device"  # a device report for a deployment of another device
    reported_in_future = "reported_in_future"  # a device report sent later than the server's clock allows
    not_applicable = "not_applicable"  # e.g. `not_now` for a security action
    not_allowed = "not_allowed"  # the kind's table has no such move from the current status
    out_of_order = "out_of_order"  # a report the device sent after this one was applied already


for _reason in RefusalReason:  # a series at 0 for each, so that the first refusal shows in rate()
    for _actor in Actor:
        metrics.TRANSITION_REFUSALS.labels(reason=_reason.value, actor=_actor.value)


@dataclass(frozen=True)
class Applied:
    deployment_id: str
    kind: Kind
    from_status: Status
    to_status: Status


@dataclass(frozen=True)
class Refusal:
    deployment_id: str
    reason: RefusalReason
    message: str
    status: Status | None = None


@dataclass(frozen=True)
class TransitionResult:
    applied: tuple[Applied, ...]
    refused: tuple[Refusal, ...]


def transition(
    session: Session,
    *,
    ids: Iterable[str],
    move: Move,
    actor: Actor,
    effects: Effects | None = None,
    now: datetime | None = None,
) -> TransitionResult:
    """Move the deployments `ids` as `move` says, where their kind's table allows it; never raises for one
    that does not fit. Set-based: one UPDATE and one INSERT of events per 5,000 ids."""
    effects = effects or Effects()
    now = now or utcnow()
    unique = list(dict.fromkeys(ids))
    applied: list[Applied] = []
    for batch in chunked(unique, IDS_PER_STATEMENT):
        applied += _apply(session, batch, move, effects, now)
    _insert_events(session, applied, actor, effects.event_detail(), now)
    moved = {a.deployment_id for a in applied}
    refused = _explain_refusals(session, [i for i in unique if i not in moved], move)
    _observe(applied, refused, move, actor)
    return TransitionResult(tuple(applied), tuple(refused))


def _apply(
    session: Session, batch: Sequence[str], move: Move, effects: Effects, now: datetime
) -> list[Applied]:
    kinds = [kind for kind in move.targets if move.sources(kind)]
    if not kinds:
        return []
    table = DEPLOYMENT
    fits = sa.or_(*(sa.and_(table.c.kind == kind, table.c.status.in_(move.sources(kind))) for kind in kinds))
    if move.due_by is not None:
        fits = sa.and_(fits, table.c.next_attempt_at <= move.due_by)
    if move.reported_at is not None:
        fits = sa.and_(
            fits, sa.or_(table.c.last_report_at.is_(None), table.c.last_report_at <= move.reported_at)
        )
    # `previous_status` is SET from the old `status`, so RETURNING hands back both sides of the move.
    returning = (table.c.id, table.c.kind, table.c.previous_status, table.c.status)
    rows = update_deployments(
        session, ids=batch, where=fits, values=_new_values(move, kinds, effects, now), returning=returning
    )
    return [Applied(row.id, Kind(row.kind), Status(row.previous_status), Status(row.status)) for row in rows]


def _new_values(move: Move, kinds: list[Kind], effects: Effects, now: datetime) -> dict[str, Any]:
    c = DEPLOYMENT.c
    values: dict[str, Any] = {
        "status": _new_status(move, kinds),
        "previous_status": c.status,
        "updated_at": now,
        "next_attempt_at": effects.next_attempt_at,
        "fetched_at": _stamp(kinds, lambda k: move.targets[k] is Status.waiting, now, c.fetched_at),
        "started_at": _stamp(kinds, lambda k: move.targets[k] in _STARTED, now, c.started_at),
        "finished_at": _stamp(kinds, lambda k: move.targets[k] in TERMINAL[k], now, c.finished_at),
    }
    if effects.error is not None:
        values |= {
            "error_code": effects.error.code,
            "error_message": effects.error.message,
            "error_detail": dict(effects.error.detail) if effects.error.detail is not None else None,
        }
    if effects.device_reason is not None:
        values["last_device_reason"] = effects.device_reason
    if move.reported_at is not None:
        values["last_report_at"] = move.reported_at
    if effects.count_postpone:
        values["postpone_count"] = c.postpone_count + 1
    if effects.reset_pushes:
        values["attempt_count"] = 0
    # Only a Queued deployment is held, and no move goes from Queued to Queued: whatever moves is no longer
    # waiting on a credential (its device checked in on its own, an admin cancelled it), and counts as held
    # no more.
    values["hold_reason"] = None
    if all(move.targets[k] is Status.queued for k in kinds):
        # Back in the queue: not on the broker until the caller enqueues it, and the relay's if it never does.
        values["enqueued_at"] = None
    if move.ops_retry:
        values |= _REOPENED
    return values


_STARTED = frozenset({Status.in_progress, Status.action_in_progress})

# An ops retry starts the deployment afresh: the policy counts again; the old error stays in the history.
_REOPENED: dict[str, Any] = {
    "attempt_count": 0,
    "postpone_count": 0,
    "error_code": None,
    "error_message": None,
    "error_detail": None,
    "finished_at": None,
    "enqueued_at": None,
}


def _new_status(move: Move, kinds: list[Kind]) -> Any:
    targets = {move.targets[k] for k in kinds}
    if len(targets) == 1:
        return targets.pop().value
    return sa.case(
        *((DEPLOYMENT.c.kind == k, move.targets[k].value) for k in kinds), else_=DEPLOYMENT.c.status
    )


def _stamp(kinds: list[Kind], applies: Any, now: datetime, column: Any) -> Any:
    stamped = [k for k in kinds if applies(k)]
    if not stamped:
        return column
    if len(stamped) == len(kinds):
        return now
    return sa.case((DEPLOYMENT.c.kind.in_(stamped), now), else_=column)


def _insert_events(
    session: Session, applied: list[Applied], actor: Actor, detail: dict[str, Any] | None, now: datetime
) -> None:
    if not applied:
        return
    rows = [
        {
            "deployment_id": a.deployment_id,
            "from_status": a.from_status,
            "to_status": a.to_status,
            "at": now,
            "actor": actor,
            "detail": detail,
        }
        for a in applied
    ]
    run(session, sa.insert(EVENT), rows)


def _explain_refusals(session: Session, ids: list[str], move: Move) -> list[Refusal]:
    if not ids:
        return []
    found: dict[str, tuple[Kind, Status, datetime | None]] = {}
    c = DEPLOYMENT.c
    for batch in chunked(ids, IDS_PER_STATEMENT):
        statement = sa.select(c.id, c.kind, c.status, c.last_report_at).where(one_of(session, c.id, batch))
        found |= {
            row.id: (Kind(row.kind), Status(row.status), row.last_report_at)
            for row in run(session, statement)
        }
    return [_refusal(i, found.get(i), move) for i in ids]


def _refusal(deployment_id: str, current: tuple[Kind, Status, datetime | None] | None, move: Move) -> Refusal:
    if current is None:
        return Refusal(deployment_id, RefusalReason.unknown_deployment, "no such deployment")
    kind, status, last_report_at = current
    if kind not in move.targets:
        message = f"{move.label} does not apply to a {kind.value} deployment"
        return Refusal(deployment_id, RefusalReason.not_applicable, message, status)
    if move.reported_at is not None and last_report_at is not None and last_report_at > move.reported_at:
        message = (
            f"{move.label} was sent at {move.reported_at.isoformat()}, before the report applied last "
            f"({last_report_at.isoformat()}); a late report changes nothing"
        )
        return Refusal(deployment_id, RefusalReason.out_of_order, message, status)
    if move.ops_retry:
        allowed = " or ".join(sorted(OPS_RETRY_FROM[kind]))
        message = f"only a {kind.value} deployment in {allowed} can be retried; this one is {status.value}"
    else:
        message = f"a {kind.value} deployment in {status.value} cannot move to {move.targets[kind].value}"
    return Refusal(deployment_id, RefusalReason.not_allowed, message, status)


def _observe(applied: list[Applied], refused: list[Refusal], move: Move, actor: Actor) -> None:
    for a in applied:
        metrics.TRANSITIONS.labels(kind=a.kind.value, status=a.to_status.value).inc()
    for r in refused:
        metrics.TRANSITION_REFUSALS.labels(reason=r.reason.value, actor=actor.value).inc()
        log.info(
            "transition refused: %s",
            r.message,
            extra={"deployment_id": r.deployment_id, "move": move.label, "reason": r.reason.value},
        )
