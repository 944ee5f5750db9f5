"""The sweeps: postponed deployments whose time has come, devices that never checked in, and the relay.

Each returns the deployments to dispatch; the caller enqueues them. Bounded: `limit` rows per call.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from models.database import Session
from models.enums import Actor
from models.statuses import Status
from models.store import Effects, ErrorInfo, Move, lock_deployments, transition
from models.store.organizations import retry_overrides
from models.store.sweeps import Due, clear_repush, due_postponed, due_repush, never_enqueued
from models.store.unsent import hand_unsent_to_relay
from workers.policy import Policies, RetryPolicy
from workers.services import wording

_POSTPONED = frozenset({Status.postponed, Status.waiting_for_startup})
_QUEUED = frozenset({Status.queued})


def requeue_postponed(session: Session, *, now: datetime, limit: int = 1_000) -> list[Due]:
    """Back to Queued for those postponed deployments whose retry time has come."""
    due = due_postponed(session, now=now, limit=limit)
    move = Move.to(Status.queued).unless_changed_since_read(_POSTPONED, due_by=now)
    result = transition(session, ids=[d.id for d in due], move=move, actor=Actor.scheduler, now=now)
    applied = {a.deployment_id for a in result.applied}
    return [d for d in due if d.id in applied]


def repush_unanswered(
    session: Session, *, policy: RetryPolicy, now: datetime, redeliver_after_s: float, limit: int = 1_000
) -> list[Due]:
    """Wake again the devices that did not check in, and send again what a lost message never pushed; fail
    those that had all the pushes the policy allows."""
    due = due_repush(session, now=now, limit=limit)
    lock_deployments(session, ids=[d.id for d in due])  # several statements follow
    policies = Policies(policy, retry_overrides(session, organization_ids={d.organization_id for d in due}))
    again: list[Due] = []
    for d in due:
        limits = policies.limits(d.organization_id, d.kind)
        deadline = d.created_at + timedelta(seconds=limits.deadline_s)
        if d.attempt_count < limits.max_pushes and now < deadline:
            again.append(d)
            continue
        over = wording.duration(now - d.created_at)
        message = f"The device did not check in after {d.attempt_count} wake-up pushes over {over}"
        effects = Effects(error=ErrorInfo("no_check_in", message, {"pushes": d.attempt_count}))
        move = Move.to(Status.failed).unless_changed_since_read(_QUEUED, due_by=now)
        transition(session, ids=[d.id], move=move, actor=Actor.scheduler, effects=effects, now=now)
    clear_repush(
        session, ids=[d.id for d in again], now=now, redeliver_at=now + timedelta(seconds=redeliver_after_s)
    )
    return again


# Creates whose process died before it sent them, handed to the relay per call: each may be 10,000 rows.
UNSENT_PER_CALL = 10


def relay_unenqueued(session: Session, *, now: datetime, grace_s: float, limit: int = 1_000) -> list[Due]:
    """Queued deployments not enqueued `grace_s` after their commit: lost between commit and enqueue. Those
    of a create that never sent them (its `unsent_create` record is still there) are taken too."""
    queued_before = now - timedelta(seconds=grace_s)
    hand_unsent_to_relay(session, created_before=queued_before, limit=UNSENT_PER_CALL)
    return never_enqueued(session, queued_before=queued_before, limit=limit)
