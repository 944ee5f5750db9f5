"""The gauges that come from the database and the broker, set by the leading scheduler alone: one process
counts, however many workers and API processes run. A scheduler that stops leading clears them, so that
only the leader's figures are ever scraped (aggregate with `max` across replicas)."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import Gauge

from models.database import Session
from models.enums import Provider
from models.store.credentials import credential_states
from models.store.maintenance import held_counts, pending_devices, status_counts
from models.store.organizations import DispatchLimits, dispatch_limits, others_limited
from scheduler import certificates, overview_gauges
from workers.actors import Actors
from workers.broker import queue_backlog
from workers.overview import gather_overview
from workers.queue_wait import OTHER, OrganizationLabels

DEPLOYMENTS = Gauge("mdmq_deployments", "Deployments in each status, by kind.", ["kind", "status"])
STUCK = Gauge(
    "mdmq_deployments_stuck",
    "Deployments unchanged for longer than MDMQ_STUCK_AFTER_S where nothing moves them on its own.",
    ["kind", "status"],
)
HELD = Gauge(
    "mdmq_deployments_held",
    "Queued deployments held because the provider refused the organization's credential, by provider and "
    "the hold's reason.",
    ["provider", "reason"],
)
PENDING_DEVICES = Gauge(
    "mdmq_receipts_pending_devices",
    "Devices still pending on pushes that have not expired, by provider (AOSP reports delivery; APNs and "
    "FCM report acceptance only).",
    ["provider"],
)
QUEUE_MESSAGES = Gauge(
    "mdmq_queue_messages",
    "Messages on the broker, by queue and state: ready; delayed (a retry or a message not yet due); "
    "in_flight (taken by a live worker process, not yet acknowledged; Redis only); orphaned (taken by a "
    "worker process that died, back on the queue within MDMQ_BROKER_HEARTBEAT_TIMEOUT_S).",
    ["queue", "state"],
)
# The organizations the queue wait names (workers.queue_wait), by the same ranking, and `other`, and
# whether each is kept back on purpose: the queue wait alert leaves those out.
ORGANIZATION_HELD = Gauge(
    "mdmq_organization_held",
    "1 when an organization the queue wait names has a provider hold (any provider), else 0; `other`: 1 "
    "when any other organization has one.",
    ["organization"],
)
ORGANIZATION_PACED = Gauge(
    "mdmq_organization_paced",
    "1 when an organization the queue wait names has a wake-up rate (wake_rate_per_s), else 0; `other`: 1 "
    "when any other organization has one.",
    ["organization"],
)
# The ranking, read in the same windows as the workers read theirs; the holds and rates every run.
NAMED = OrganizationLabels()
LEADER_ONLY = (
    DEPLOYMENTS,
    STUCK,
    HELD,
    PENDING_DEVICES,
    QUEUE_MESSAGES,
    ORGANIZATION_HELD,
    ORGANIZATION_PACED,
)


def gauges_job(actors: Actors, now: datetime) -> int:
    """Counts deployments by status, held ones, pending devices and the broker's backlog, and shows each
    push credential's state; returns how many deployments are held."""
    NAMED.refresh(actors.app.session, now=now)
    with actors.app.session() as s:
        statuses = status_counts(s)
        held = held_counts(s)
        pending = pending_devices(s, now=now)
        credentials = credential_states(s)
        limits = named_limits(s, named=NAMED.named)
    certificates.show_credentials(credentials)
    show_dispatch_limits(limits)
    for (kind, status), n in statuses.items():
        DEPLOYMENTS.labels(kind=kind.value, status=status.value).set(n)
    HELD.clear()  # a hold that ended leaves no series behind
    for (provider, reason), n in held.items():
        HELD.labels(provider=provider.value, reason=reason).set(n)
    holding = {provider for provider, _ in held}
    for provider in set(Provider) - holding:  # nothing held: a 0 with no reason, so the series exists
        HELD.labels(provider=provider.value, reason="").set(0)
    for provider, n in pending.items():
        PENDING_DEVICES.labels(provider=provider.value).set(n)
    for (queue, state), n in queue_backlog(actors.app.broker).items():
        QUEUE_MESSAGES.labels(queue=queue, state=state).set(n)
    with actors.app.session() as s:
        overview_gauges.export_overview(gather_overview(s, actors.app.broker, now=now))
    return sum(held.values())


def named_limits(s: Session, *, named: frozenset[str]) -> dict[str, DispatchLimits]:
    """Held and paced for each label of the queue wait: the organizations it names, and `other` (any of the
    rest)."""
    return dispatch_limits(s, organization_ids=named) | {OTHER: others_limited(s, organization_ids=named)}


def show_dispatch_limits(limits: dict[str, DispatchLimits]) -> None:
    """One series of each gauge per label (the named organizations and `other`), 0 included; an organization
    that left the ranking goes."""
    ORGANIZATION_HELD.clear()
    ORGANIZATION_PACED.clear()
    for organization_id, limit in limits.items():
        ORGANIZATION_HELD.labels(organization_id).set(int(limit.held))
        ORGANIZATION_PACED.labels(organization_id).set(int(limit.paced))


def clear() -> None:
    """Drop every leader-only series, the certificate watch's too: a standby exports none of them."""
    for gauge in (*LEADER_ONLY, certificates.EXPIRY, certificates.CREDENTIAL_ACCEPTED):
        gauge.clear()
    overview_gauges.clear()
