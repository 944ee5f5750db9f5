"""What an operator does to deployments: cancel them, or retry the ones that failed, by id or a whole
rollout at once; each kept in the audit record of the deployments' organizations."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager

from models.batches import IDS_PER_STATEMENT
from models.database import Session
from models.enums import Actor
from models.statuses import CANCELLABLE, OPS_RETRY_FROM, Kind, Status
from models.store import Move, TransitionResult, transition
from models.store.audit import DEPLOYMENTS_CANCELLED, DEPLOYMENTS_RETRIED, record_deployments_changed
from models.store.ops import deployment_organizations
from models.store.rollouts import rollout_deployment_ids

OPERATOR = "cli"  # the audit actor of a change no API token made
SessionFactory = Callable[[], AbstractContextManager[Session]]
Apply = Callable[..., TransitionResult]


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


def cancel_rollout(
    sessions: SessionFactory,
    *,
    rollout_id: str,
    actor: Actor = Actor.ops,
    by: str = OPERATOR,
    chunk: int = IDS_PER_STATEMENT,
) -> Iterator[TransitionResult]:
    """`cancel_deployments` for every deployment of the rollout the device has not started."""
    return _whole_rollout(
        sessions, rollout_id, CANCELLABLE, cancel_deployments, actor=actor, by=by, chunk=chunk
    )


def retry_rollout(
    sessions: SessionFactory,
    *,
    rollout_id: str,
    actor: Actor = Actor.ops,
    by: str = OPERATOR,
    chunk: int = IDS_PER_STATEMENT,
) -> Iterator[TransitionResult]:
    """`retry_deployments` for every deployment of the rollout that failed. The caller enqueues each
    chunk's applied ones as it comes."""
    return _whole_rollout(
        sessions, rollout_id, OPS_RETRY_FROM, retry_deployments, actor=actor, by=by, chunk=chunk
    )


def _whole_rollout(
    sessions: SessionFactory,
    rollout_id: str,
    statuses: Mapping[Kind, frozenset[Status]],
    apply: Apply,
    *,
    actor: Actor,
    by: str,
    chunk: int,
) -> Iterator[TransitionResult]:
    """The rollout's deployments in `statuses`, a chunk per transaction (one set-based transition each),
    each result yielded once committed: an interrupted one has done what it yielded. Only those in `statuses`
    when read are selected; one that moved in between is refused with the transition's reason."""
    after: str | None = None
    while True:
        with sessions() as session:
            ids = rollout_deployment_ids(
                session, rollout_id=rollout_id, statuses=statuses, after=after, limit=chunk
            )
            if not ids:
                return
            result = apply(session, ids=ids, actor=actor, by=by)
        yield result
        if len(ids) < chunk:
            return
        after = ids[-1]


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
