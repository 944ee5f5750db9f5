"""Push credential rows: the certificate watch's reads and the upload's write. (The dispatch's reads are in
`models.store.dispatch`.)"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from models.enums import CredentialStatus, Provider
from models.store._sql import run
from models.tables import PushCredential, table_of

CREDENTIAL = table_of(PushCredential)

# What a stored credential takes from the uploaded one; its id, organization, provider and creation stay.
_REPLACED = (
    *("kind", "secret", "key_id", "team_id", "topic", "project_id", "environment", "fingerprint"),
    *("not_after", "status", "status_reason", "last_checked_at", "updated_at"),
)


def credentials_to_check(session: Session, *, limit: int) -> list[PushCredential]:
    """Up to `limit` credentials, the least recently checked first (never checked before all)."""
    oldest = col(PushCredential.last_checked_at).asc().nulls_first()
    return list(session.exec(select(PushCredential).order_by(oldest).limit(limit)))


@dataclass(frozen=True)
class CredentialState:
    """What a credential's gauges show: its status and its certificate's expiry, never its material."""

    organization_id: str
    provider: Provider
    status: CredentialStatus
    not_after: datetime | None


def credential_states(session: Session) -> list[CredentialState]:
    """Every push credential's status and expiry, by organization and provider; the secret is not read."""
    columns = (
        CREDENTIAL.c.organization_id,
        CREDENTIAL.c.provider,
        CREDENTIAL.c.status,
        CREDENTIAL.c.not_after,
    )
    rows = run(session, sa.select(*columns).order_by(*columns[:2]))
    return [
        CredentialState(r.organization_id, Provider(r.provider), CredentialStatus(r.status), r.not_after)
        for r in rows
    ]


def lock_credential(session: Session, *, credential_id: str) -> PushCredential | None:
    """The credential `credential_id`, its row locked till the end of the transaction; None if it is gone."""
    return session.get(PushCredential, credential_id, with_for_update=True)


def record_credential_check(
    session: Session,
    *,
    credential_id: str,
    checked_at: datetime,
    status: CredentialStatus,
    status_reason: str | None,
    alerted_days: int | None,
) -> None:
    """What the certificate watch found for the credential: its status, and the last threshold alerted."""
    values = {
        "last_checked_at": checked_at,
        "status": status,
        "status_reason": status_reason,
        "alerted_days": alerted_days,
    }
    run(session, sa.update(CREDENTIAL).where(CREDENTIAL.c.id == credential_id).values(values))


def save_credential(
    session: Session, *, existing: PushCredential | None, uploaded: PushCredential
) -> PushCredential:
    """Store `uploaded` (fingerprint, expiry, status and timestamps set by the caller) as the organization's
    credential for its provider: into `existing`'s row when there is one, which keeps its id. The watch's
    last alert is cleared: new material alerts afresh."""
    row = existing or uploaded
    if existing is not None:
        for name in _REPLACED:
            setattr(existing, name, getattr(uploaded, name))
    row.alerted_days = None
    session.add(row)
    session.flush()
    return row


def list_credentials(session: Session, *, organization_id: str | None = None) -> list[PushCredential]:
    """The organization's push credentials, or every organization's (None), by organization and provider."""
    statement = select(PushCredential)
    if organization_id is not None:
        statement = statement.where(PushCredential.organization_id == organization_id)
    order = (col(PushCredential.organization_id), col(PushCredential.provider))
    return list(session.exec(statement.order_by(*order)))
