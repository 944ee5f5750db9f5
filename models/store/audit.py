"""The audit record: who changed what an organization's pushes depend on, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from models.tables import AuditEvent
from models.types import utcnow

# The actions recorded besides a forced topic change, a hold released and tokens restored.
CREDENTIAL_UPLOADED = "credential.uploaded"
DEPLOYMENTS_CANCELLED = "deployments.cancelled"
DEPLOYMENTS_RETRIED = "deployments.retried"
TOKEN_CREATED = "token.created"  # noqa: S105  (an action, not a password)
TOKEN_REVOKED = "token.revoked"  # noqa: S105
SECRETS_ROTATED = "secrets.rotated"
DEVICE_UNENROLLED = "device.unenrolled"
IDS_KEPT = 100  # deployment ids an event names; each deployment's own history records the change too


def record_audit_event(
    session: Session,
    *,
    organization_id: str,
    actor: str,
    action: str,
    detail: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> AuditEvent:
    """Add one event to the caller's transaction: it is recorded if, and only if, the change it describes
    commits. `actor` is an API token's id, `cli` or `scheduler`; `detail` names no secret."""
    event = AuditEvent(
        organization_id=organization_id, actor=actor[:64], action=action, detail=detail, at=now or utcnow()
    )
    session.add(event)
    session.flush()
    return event


def record_deployments_changed(
    session: Session, *, organization_id: str, actor: str, action: str, applied: list[str], refused: int
) -> AuditEvent:
    """A cancel or a retry of an organization's deployments: how many, and the first `IDS_KEPT` ids."""
    detail = {"applied": len(applied), "refused": refused, "ids": applied[:IDS_KEPT]}
    return record_audit_event(
        session, organization_id=organization_id, actor=actor, action=action, detail=detail
    )


def record_secret_rotation(
    session: Session,
    *,
    rows_by_organization: Mapping[str, int],
    key_id: str,
    actor: str = "cli",
    now: datetime | None = None,
) -> list[AuditEvent]:
    """`mdmq secrets rotate` re-encrypted `rows_by_organization[org]` rows of each organization under the key
    `key_id` (its id, never the key): one `secrets.rotated` event per organization, in the caller's
    transaction. Call it once per transaction with that transaction's counts."""
    return [
        record_audit_event(
            session,
            organization_id=organization_id,
            actor=actor,
            action=SECRETS_ROTATED,
            detail={"rows": rows, "keyId": key_id},
            now=now,
        )
        for organization_id, rows in sorted(rows_by_organization.items())
        if rows
    ]


def audit_events(
    session: Session,
    *,
    organization_id: str,
    action: str | None = None,
    since: datetime | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[AuditEvent]:
    """The organization's events, newest first; only `action`'s, only those at or after `since` when given;
    a page after the event `before` (an event id: the last one of the previous page). None: an empty list."""
    statement = select(AuditEvent).where(AuditEvent.organization_id == organization_id)
    if action is not None:
        statement = statement.where(AuditEvent.action == action)
    if since is not None:
        statement = statement.where(col(AuditEvent.at) >= since)
    if before is not None:
        statement = statement.where(_older_than(before, organization_id=organization_id))
    newest_first = (col(AuditEvent.at).desc(), col(AuditEvent.id).desc())
    return list(session.exec(statement.order_by(*newest_first).limit(limit)))


def _older_than(event_id: int, *, organization_id: str) -> sa.ColumnElement[bool]:
    """After the event `event_id` in newest-first order: keyset on (at, id), which the index serves. Another
    organization's event is as unknown as a missing one (nothing after it), so a cursor tells nothing of
    another organization's record."""
    at = (
        select(AuditEvent.at)
        .where(AuditEvent.id == event_id, AuditEvent.organization_id == organization_id)
        .scalar_subquery()
    )
    return sa.tuple_(col(AuditEvent.at), col(AuditEvent.id)) < sa.tuple_(at, sa.literal(event_id))
