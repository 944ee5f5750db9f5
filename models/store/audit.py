"""The audit record: who changed what an organization's pushes depend on, in the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from models.tables import AuditEvent
from models.types import utcnow


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
    commits. `detail` names no secret."""
    event = AuditEvent(
        organization_id=organization_id, actor=actor[:64], action=action, detail=detail, at=now or utcnow()
    )
    session.add(event)
    session.flush()
    return event


def audit_events(
    session: Session, *, organization_id: str, action: str | None = None, limit: int = 100
) -> list[AuditEvent]:
    """The organization's events, newest first; only `action`'s when given. None: an empty list."""
    statement = select(AuditEvent).where(AuditEvent.organization_id == organization_id)
    if action is not None:
        statement = statement.where(AuditEvent.action == action)
    newest_first = (col(AuditEvent.at).desc(), col(AuditEvent.id).desc())
    return list(session.exec(statement.order_by(*newest_first).limit(limit)))
