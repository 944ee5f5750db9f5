"""What an operator does to deployments: cancel them, or retry the ones that failed; each kept in the
audit record of the deployments' organizations."""

from __future__ import annotations

from collections.abc import Sequence

from models.database import Session
from models.enums import Actor
from models.statuses import Status
from models.store import Move, TransitionResult, transition
from models.store.audit import DEPLOYMENTS_CANCELLED, DEPLOYMENTS_RETRIED, record_deployments_changed
from models.store.ops import deployment_organizations

OPERATOR = "cli"  # the audit actor of a change no API token made


def cancel_deployments(
    session: Session, *, ids: Sequence[str], actor: Actor = Actor.ops, by: str = OPERATOR
) -> TransitionResult:
    """Cancelled, where the device has not started the work (Queued, Postponed, Waiting for startup, Error
    distributing); a cancelled deployment ignores every later report. Audited as `by`'s (an API token's id,
    or `cli`)."""
    result = transition(session, ids=ids, move=Move.to(Status.cancelled), actor=actor)
    _audit(session, result, action=DEPLOYMENTS_CANCELLED, by=by)
    return result


def retry_deployments(
    session: Session, *, ids: Sequence[str], actor: Actor = Actor.ops, by: str = OPERATOR
) -> TransitionResult:
    """Back to Queued from Failed or Error distributing, afresh: counters reset, the old error kept in the
    history. Audited as `by`'s. The caller enqueues the applied ones."""
    result = transition(session, ids=ids, move=Move.ops_retry_to_queued(), actor=actor)
    _audit(session, result, action=DEPLOYMENTS_RETRIED, by=by)
    return result


def _audit(session: Session, result: TransitionResult, *, action: str, by: str) -> None:
    """One event for each organization some of whose deployments moved, in the transition's transaction."""
    applied = deployment_organizations(session, ids=[a.deployment_id for a in result.applied])
    refused = deployment_organizations(session, ids=[r.deployment_id for r in result.refused])
    for organization_id, ids in applied.items():
        record_deployments_changed(
            session,
            organization_id=organization_id,
            actor=by,
            action=action,
            applied=ids,
            refused=len(refused.get(organization_id, [])),
        )
