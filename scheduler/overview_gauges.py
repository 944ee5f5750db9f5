"""The operator's page's figures as gauges, set by the leading scheduler's gauges job from the same overview
the page reads (`workers.overview`), so that every figure on the page is also in Prometheus. The queues'
ready and delayed messages are `mdmq_queue_messages` (scheduler.gauges); push credentials' expiry is
`mdmq_certificate_expiry_timestamp_seconds` (scheduler.certificates)."""

from __future__ import annotations

from prometheus_client import Gauge

from workers.overview import Overview

DEAD = Gauge(
    "mdmq_queue_dead_messages",
    "Messages dead-lettered on each queue: they ran out of retries (Redis keeps them 7 days).",
    ["queue"],
)
CONSUMERS = Gauge(
    "mdmq_queue_consumers", "Consumers of each queue (RabbitMQ: one per worker process).", ["queue"]
)
LIVE_WORKERS = Gauge(
    "mdmq_workers_live",
    "Worker processes the broker knows alive: heartbeats within its timeout (Redis), or the most consumers "
    "of a queue (RabbitMQ).",
)
HEARTBEAT_AGE = Gauge(
    "mdmq_worker_heartbeat_age_seconds",
    "Seconds since each live process's last heartbeat on the broker (Redis), by the broker's id of it.",
    ["worker"],
)
ROLLOUTS_RUNNING = Gauge(
    "mdmq_rollouts_running",
    "Rollouts created within the last 7 days with deployments still to end (at most the page's 20 newest).",
)
ROLLOUT_DEPLOYMENTS = Gauge(
    "mdmq_rollout_deployments",
    "Deployments of each running rollout the operator's page lists, by state: total, finished (in a "
    "terminal status), pushed (at least once), held.",
    ["rollout", "organization", "state"],
)
HOLD_SINCE = Gauge(
    "mdmq_provider_hold_since_timestamp_seconds",
    "When an organization's pushes through a provider were held (Unix time), by scope and the provider's "
    "raw reason; the series goes when the hold ends.",
    ["organization", "provider", "scope", "reason"],
)
ORGANIZATION_HELD = Gauge(
    "mdmq_organization_held_deployments",
    "Queued deployments of each held organization waiting on its hold.",
    ["organization"],
)
CREDENTIAL_STATUS = Gauge(
    "mdmq_push_credential_status",
    "1 for each push credential's status (valid, expiring, expired, revoked, invalid).",
    ["organization", "provider", "kind", "status"],
)
GAUGES = (
    DEAD,
    CONSUMERS,
    LIVE_WORKERS,
    HEARTBEAT_AGE,
    ROLLOUTS_RUNNING,
    ROLLOUT_DEPLOYMENTS,
    HOLD_SINCE,
    ORGANIZATION_HELD,
    CREDENTIAL_STATUS,
)


def export_overview(o: Overview) -> None:
    """Set every gauge from `o`; a series whose subject went (a worker, a rollout, a hold) goes too."""
    clear()
    for q in o.queues:
        DEAD.labels(q.queue).set(q.dead)
        if q.consumers is not None:
            CONSUMERS.labels(q.queue).set(q.consumers)
    if o.live_workers is not None:
        LIVE_WORKERS.set(o.live_workers)
    for w in o.workers:
        HEARTBEAT_AGE.labels(w.worker_id).set(w.age_s)
    ROLLOUTS_RUNNING.set(len(o.rollouts))
    for r in o.rollouts:
        states = {"total": r.total, "finished": r.finished, "pushed": r.pushed, "held": r.held}
        for state, n in states.items():
            ROLLOUT_DEPLOYMENTS.labels(r.rollout_id, r.organization_id, state).set(n)
    for h in o.holds:
        HOLD_SINCE.labels(h.organization_id, h.provider, h.scope, h.provider_reason or "").set(
            h.held_at.timestamp()
        )
        ORGANIZATION_HELD.labels(h.organization_id).set(h.held_deployments)
    for c in o.credentials:
        CREDENTIAL_STATUS.labels(c.organization_id, c.provider, c.kind, c.status).set(1)


def clear() -> None:
    for gauge in GAUGES:
        gauge.clear()
