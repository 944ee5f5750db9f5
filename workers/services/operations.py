"""What an operator does to deployments: cancel them, or retry the ones that failed."""

from __future__ import annotations

from collections.abc import Sequence

from models.database import Session
from models.enums import Actor
from models.statuses import Status
from models.store import Move, TransitionResult, transition


def cancel_deployments(session: Session, *, ids: Sequence[str], actor: Actor = Actor.ops) -> TransitionResult:
    """Cancelled, where the device has not started the work (Queued, Postponed, Waiting for startup, Error
    distributing); a cancelled deployment ignores every later report."""
    return transition(session, ids=ids, move=Move.to(Status.cancelled), actor=actor)


def retry_deployments(session: Session, *, ids: Sequence[str], actor: Actor = Actor.ops) -> TransitionResult:
    """Back to Queued from Failed or Error distributing, afresh: counters reset, the old error kept in the
    history. The caller enqueues the applied ones."""
    return transition(session, ids=ids, move=Move.ops_retry_to_queued(), actor=actor)
