"""The operator's overview: every organization's queues, workers, running rollouts, holds and credentials,
gathered in one place for the operator's page (`/ops`), `mdmq queues` and the scheduler's gauges, so that
all three show the same figures. Names no secret: no token, key, push magic or fingerprint."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dramatiq

from models.database import Session
from models.store.credentials import list_credentials
from models.store.holds import held_providers
from models.store.ops import held_deployment_counts
from models.store.rollouts import RolloutProgress, running_rollouts
from workers.queues import BrokerUnreachable, QueueFigures, WorkerBeat, broker_figures

# Rollouts created this long ago or less count as running while deployments of theirs have still to end; the
# page lists the newest of them.
ROLLOUT_WINDOW = timedelta(days=7)
ROLLOUTS_SHOWN = 20


@dataclass(frozen=True)
class RolloutLine:
    rollout_id: str
    organization_id: str
    kind: str
    total: int
    finished: int
    pushed: int
    held: int
    created_at: datetime
    last_push_at: datetime | None

    @property
    def percent(self) -> float:
        return 100.0 * self.finished / self.total if self.total else 100.0

    @classmethod
    def from_progress(cls, p: RolloutProgress) -> RolloutLine:
        r = p.rollout
        return cls(
            r.id,
            r.organization_id,
            r.kind,
            r.total,
            p.finished,
            p.pushed,
            p.held,
            r.created_at,
            p.last_push_at,
        )


@dataclass(frozen=True)
class HoldLine:
    organization_id: str
    provider: str
    scope: str
    reason: str
    provider_reason: str | None
    held_at: datetime
    next_try_at: datetime | None
    held_deployments: int


@dataclass(frozen=True)
class CredentialLine:
    organization_id: str
    provider: str
    kind: str
    status: str
    not_after: datetime | None
    days_left: float | None


@dataclass(frozen=True)
class Overview:
    at: datetime
    broker: str
    queues: list[QueueFigures]
    workers: list[WorkerBeat]
    rollouts: list[RolloutLine]
    holds: list[HoldLine]
    credentials: list[CredentialLine]
    broker_problem: str | None = None  # why the broker's figures (queues, workers) are missing

    @property
    def live_workers(self) -> int | None:
        """Worker processes: heartbeats on Redis; on RabbitMQ the most consumers of one queue (a process
        consumes each of its queues once; the urgent lane's process, on the urgent and paced queues
        alone, is not counted beside the bulk ones); None on the in-process broker, or when the broker is
        down."""
        if self.broker_problem is not None:
            return None
        if self.broker == "redis":
            return len(self.workers)
        counts = [q.consumers for q in self.queues if q.consumers is not None]
        return max(counts) if counts else None

    def as_json(self) -> dict[str, Any]:
        """The figures as `/ops/figures` and `mdmq queues --json` give them (times as datetimes)."""
        return {
            "at": self.at,
            "broker": self.broker,
            "brokerProblem": self.broker_problem,
            "queues": [_queue(q) for q in self.queues],
            "liveWorkers": self.live_workers,
            "workers": [
                {"id": w.worker_id, "name": w.name, "heartbeatAgeS": round(w.age_s, 1)} for w in self.workers
            ],
            "rollouts": [_rollout(r) for r in self.rollouts],
            "holds": [_hold(h) for h in self.holds],
            "credentials": [_credential(c) for c in self.credentials],
        }


def gather_overview(session: Session, broker: dramatiq.Broker, *, now: datetime) -> Overview:
    """Every figure of the overview, read now: the broker's, then the database's in `session`. A broker that
    does not answer leaves its figures out and says why: the database's are still worth seeing then."""
    problem = None
    try:
        queues, workers = broker_figures(broker, now_ms=int(now.timestamp() * 1000))
    except BrokerUnreachable as e:
        queues, workers, problem = [], [], str(e)
    progress = running_rollouts(session, since=now - ROLLOUT_WINDOW, limit=ROLLOUTS_SHOWN)
    return Overview(
        now,
        broker_kind(broker),
        queues,
        workers,
        [RolloutLine.from_progress(p) for p in progress],
        _holds(session),
        _credentials(session, now),
        problem,
    )


def broker_kind(broker: dramatiq.Broker) -> str:
    """`redis`, `rabbitmq` or `stub` (the in-process broker)."""
    return type(broker).__name__.removesuffix("Broker").lower()


def _holds(session: Session) -> list[HoldLine]:
    held = Counter[str]()
    for organization_id, _, n in held_deployment_counts(session):
        held[organization_id] += n
    return [
        HoldLine(
            h.organization_id,
            h.provider.value,
            h.scope,
            h.reason,
            h.provider_reason,
            h.held_at,
            h.probe_at,
            held[h.organization_id],
        )
        for h in held_providers(session)
    ]


def _credentials(session: Session, now: datetime) -> list[CredentialLine]:
    """Every organization's push credentials, soonest to expire first (those without an expiry last)."""
    lines = [
        CredentialLine(
            c.organization_id,
            c.provider.value,
            c.kind.value,
            c.status.value,
            c.not_after,
            None if c.not_after is None else round((c.not_after - now).total_seconds() / 86_400, 1),
        )
        for c in list_credentials(session)
    ]
    return sorted(lines, key=lambda c: (c.days_left is None, c.days_left or 0.0, c.organization_id))


def _queue(q: QueueFigures) -> dict[str, Any]:
    return {
        "queue": q.queue,
        "ready": q.ready,
        "delayed": q.delayed,
        "inFlight": q.in_flight,
        "orphaned": q.orphaned,
        "dead": q.dead,
        "consumers": q.consumers,
    }


def _rollout(r: RolloutLine) -> dict[str, Any]:
    return {
        "id": r.rollout_id,
        "organizationId": r.organization_id,
        "kind": r.kind,
        "total": r.total,
        "finished": r.finished,
        "pushed": r.pushed,
        "held": r.held,
        "percent": round(r.percent, 1),
        "createdAt": r.created_at,
        "lastPushAt": r.last_push_at,
    }


def _hold(h: HoldLine) -> dict[str, Any]:
    return {
        "organizationId": h.organization_id,
        "provider": h.provider,
        "scope": h.scope,
        "reason": h.reason,
        "providerReason": h.provider_reason,
        "heldAt": h.held_at,
        "nextTryAt": h.next_try_at,
        "heldDeployments": h.held_deployments,
    }


def _credential(c: CredentialLine) -> dict[str, Any]:
    return {
        "organizationId": c.organization_id,
        "provider": c.provider,
        "kind": c.kind,
        "status": c.status,
        "notAfter": c.not_after,
        "daysLeft": c.days_left,
    }
