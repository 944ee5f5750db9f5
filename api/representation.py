"""The one JSON shape of each thing mdmq shows: camelCase, as the API answers and every `--json` prints.

Times stay `datetime`: the API's response models and the command line's `--json` write them as ISO 8601.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from models.enums import PROVIDER_NAMES
from models.statuses import Status
from models.store import TransitionResult
from models.store.rollouts import RolloutProgress
from models.store.tokens import expiry_of, is_legacy
from models.tables import (
    ApiToken,
    AuditEvent,
    Deployment,
    DeploymentEvent,
    Device,
    ProviderHold,
    PushAttempt,
    PushCredential,
    PushReceipt,
)


def deployment_summary(d: Deployment) -> dict[str, Any]:
    """A deployment in a list: where it stands and why, without its history."""
    return {
        "id": d.id,
        "organizationId": d.organization_id,
        "deviceId": d.device_id,
        "kind": d.kind.value,
        "status": d.status.value,
        "held": d.hold_reason,
        "error": d.error_message,
        "updatedAt": d.updated_at,
    }


def deployment_detail(
    d: Deployment,
    history: Sequence[DeploymentEvent],
    receipt: PushReceipt | None,
    attempts: Sequence[PushAttempt] = (),
) -> dict[str, Any]:
    """One deployment: its summary, with the error's code and detail, its history, its push receipt and its
    failed pushes (newest first). Queued and waiting to push again after a failed push, its error is that
    push's answer and its next attempt is the retry's."""
    error = None
    if d.error_code is not None:
        error = {"code": d.error_code, "message": d.error_message, "detail": d.error_detail}
    next_attempt_at = d.next_attempt_at
    if (failed := retrying(d, attempts)) is not None:
        error = push_failure(failed)
        next_attempt_at = failed.next_attempt_at or next_attempt_at
    return deployment_summary(d) | {
        "attempts": d.attempt_count,
        "postpones": d.postpone_count,
        "nextAttemptAt": next_attempt_at,
        "error": error,
        "createdAt": d.created_at,
        "history": [event(e) for e in history],
        "receipt": None if receipt is None else push_receipt(receipt),
        "pushAttempts": [push_attempt(a) for a in attempts],
    }


def retrying(d: Deployment, attempts: Sequence[PushAttempt]) -> PushAttempt | None:
    """The last failed push (`attempts` are newest first) of a Queued deployment not pushed since: a later
    claim sets `pushed_at` past it, and a failed one gives its claim back (`pushed_at` None)."""
    if d.status is not Status.queued or not attempts:
        return None
    last = attempts[0]
    return last if d.pushed_at is None or d.pushed_at <= last.at else None


def push_failure(a: PushAttempt) -> dict[str, Any]:
    """A failed push as a deployment's error: what the provider answered, and when it goes again."""
    answer = " ".join(str(part) for part in (a.status, a.reason) if part) or a.outcome
    then = f"; next try at {a.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC" if a.next_attempt_at else ""
    return {
        "code": "push_failed",
        "message": f"{PROVIDER_NAMES[a.provider]} did not accept the push: {answer}{then}",
        "detail": {
            "provider": a.provider.value,
            "status": a.status,
            "reason": a.reason,
            "outcome": a.outcome,
        },
    }


def push_attempt(a: PushAttempt) -> dict[str, Any]:
    return {
        "at": a.at,
        "provider": a.provider.value,
        "outcome": a.outcome,
        "status": a.status,
        "reason": a.reason,
        "nextAttemptAt": a.next_attempt_at,
    }


def event(e: DeploymentEvent) -> dict[str, Any]:
    return {
        "fromStatus": e.from_status.value if e.from_status else None,
        "toStatus": e.to_status.value,
        "at": e.at,
        "actor": e.actor.value,
        "detail": e.detail,
    }


def push_receipt(receipt: PushReceipt) -> dict[str, Any]:
    return {
        "provider": receipt.provider.value,
        "sentAt": receipt.sent_at,
        "expiresAt": receipt.expires_at,
        "delivered": receipt.delivered,
        "pendingDevices": receipt.pending_devices,
    }


def credential(row: PushCredential) -> dict[str, Any]:
    """A push credential without its secret: no answer and no output ever carries one."""
    return {
        "organizationId": row.organization_id,
        "provider": row.provider.value,
        "kind": row.kind.value,
        "status": row.status.value,
        "statusReason": row.status_reason,
        "notAfter": row.not_after,
        "keyId": row.key_id,
        "teamId": row.team_id,
        "topic": row.topic,
        "projectId": row.project_id,
        "environment": row.environment.value,
        "updatedAt": row.updated_at,
    }


def provider_hold(h: ProviderHold) -> dict[str, Any]:
    """An organization's pushes through a provider, held: why, and when one push is tried again."""
    return {
        "organizationId": h.organization_id,
        "provider": h.provider.value,
        "scope": h.scope,
        "reason": h.reason,
        "providerReason": h.provider_reason,
        "credential": h.fingerprint,
        "heldAt": h.held_at,
        "nextTryAt": h.probe_at,
        "tries": h.probe_failures,
        "lastTry": h.last_probe_result,
    }


def outcome(results: Sequence[TransitionResult], *, unknown: Iterable[str] = ()) -> dict[str, Any]:
    """What a cancel, a retry or device reports did: the ids applied, and each refused one with its reason;
    `unknown` ids (none of the organization's deployments) are refused as `unknown_deployment`."""
    refused = [{"id": f.deployment_id, "reason": f.reason.value} for r in results for f in r.refused]
    refused += [{"id": i, "reason": "unknown_deployment"} for i in unknown]
    return {"applied": [a.deployment_id for r in results for a in r.applied], "refused": refused}


def api_token(row: ApiToken) -> dict[str, Any]:
    """An API token without its secret (only its hash is stored): what it may do, and for how long."""
    return {
        "id": row.id,
        "organizationId": row.organization_id,
        "permissions": list(row.permissions),
        "createdAt": row.created_at,
        "expiresAt": expiry_of(row),
        "lastUsedAt": row.last_used_at,
        "revokedAt": row.revoked_at,
        "legacy": is_legacy(row),
    }


def audit_event(e: AuditEvent) -> dict[str, Any]:
    """Who (an API token's id, `cli`, `scheduler`) did what to an organization, and when."""
    return {
        "id": e.id,
        "organizationId": e.organization_id,
        "at": e.at,
        "actor": e.actor,
        "action": e.action,
        "detail": e.detail,
    }


def rollout(p: RolloutProgress) -> dict[str, Any]:
    """A rollout and where it stands: counts per status, push state, and its push rate and ETA."""
    r = p.rollout
    rate, eta = p.rate_per_s, p.eta_s
    reasons = sorted(p.held_reasons.items(), key=lambda item: (-item[1], item[0]))
    return {
        "id": r.id,
        "organizationId": r.organization_id,
        "kind": r.kind,
        "total": r.total,
        "createdAt": r.created_at,
        "createdBy": r.created_by,
        "counts": {s.value: p.counts[s] for s in Status if s in p.counts},
        "finished": p.finished,
        "done": p.done,
        "push": {
            "neverPushed": p.never_pushed,
            "pushed": p.pushed,
            "retrying": p.retrying,
            "held": p.held,
            "heldReasons": [{"reason": reason, "count": n} for reason, n in reasons],
        },
        "firstPushAt": p.first_push_at,
        "lastPushAt": p.last_push_at,
        "ratePerSecond": None if rate is None else round(rate, 2),
        "etaSeconds": None if eta is None else round(eta),
        "measuredAt": p.measured_at,
    }


def device(d: Device, *, last_push: datetime | None) -> dict[str, Any]:
    """A device without its secrets: its token's state and the invalidation's record, never the token or the
    push magic. `last_push`: when a push last woke it (the latest of its deployments')."""
    return {
        "id": d.id,
        "organizationId": d.organization_id,
        "platform": d.platform.value,
        "provider": d.provider.value,
        "topic": d.topic,
        "labels": list(d.labels or []),
        "token": {
            "state": d.token_state.value,
            "reason": d.token_invalid_reason,
            "providerStatus": d.token_invalid_status,
            "invalidAt": d.token_invalid_at,
            "ambiguous": d.token_invalid_ambiguous,
        },
        "enrolled": d.unenrolled_at is None,
        "unenrolledAt": d.unenrolled_at,
        "lastPushAt": last_push,
        "lastReportAt": d.last_seen_at,
        "createdAt": d.created_at,
        "updatedAt": d.updated_at,
    }
