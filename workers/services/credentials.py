"""Storing a push credential: validated, its expiry read, and the deployments held for it released."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, select

from models.enums import CredentialKind, CredentialStatus, Provider, PushEnvironment
from models.ids import new_id
from models.store.dispatch import release_holds
from models.tables import PushCredential
from models.types import utcnow
from workers.providers.credentials import ApnsCertificate
from workers.providers.rows import credential_from_row

# Within this of its expiry a credential is `expiring`: the certificate watch alerts from 30 days out.
EXPIRING_WITHIN = timedelta(days=30)


@dataclass(frozen=True)
class StoredCredential:
    credential: PushCredential
    released: list[str]  # deployments that were held for this credential: enqueue them


def store_credential(
    session: Session,
    *,
    organization_id: str,
    provider: Provider,
    kind: CredentialKind,
    secret: str,
    key_id: str | None = None,
    team_id: str | None = None,
    topic: str | None = None,
    project_id: str | None = None,
    environment: PushEnvironment = PushEnvironment.production,
    now: datetime | None = None,
) -> StoredCredential:
    """Validate and store the organization's credential for `provider`, replacing the previous one.

    Raises `InvalidCredential` (naming no secret) when the material is unusable, and changes nothing then.
    Running workers pick the new material up by its fingerprint on their next dispatch.
    """
    now = now or utcnow()
    candidate = PushCredential(
        id=new_id(),
        organization_id=organization_id,
        provider=provider,
        kind=kind,
        secret=secret,
        fingerprint="",
        key_id=key_id,
        team_id=team_id,
        topic=topic,
        project_id=project_id,
        environment=environment,
    )
    material = credential_from_row(candidate, stored=False)
    not_after = material.not_after if isinstance(material, ApnsCertificate) else None
    if not_after is not None and not_after <= now:
        status = CredentialStatus.expired
    elif not_after is not None and not_after - now <= EXPIRING_WITHIN:
        status = CredentialStatus.expiring
    else:
        status = CredentialStatus.valid
    stored = _upsert(
        session, candidate, fingerprint=material.fingerprint, not_after=not_after, status=status, now=now
    )
    usable = status in (CredentialStatus.valid, CredentialStatus.expiring)
    released = release_holds(session, organization_id=organization_id, provider=provider) if usable else []
    return StoredCredential(stored, released)


def _upsert(
    session: Session,
    candidate: PushCredential,
    *,
    fingerprint: str,
    not_after: datetime | None,
    status: CredentialStatus,
    now: datetime,
) -> PushCredential:
    existing = session.exec(
        select(PushCredential).where(
            PushCredential.organization_id == candidate.organization_id,
            PushCredential.provider == candidate.provider,
        )
    ).first()
    row = existing or candidate
    for name in ("kind", "secret", "key_id", "team_id", "topic", "project_id", "environment"):
        setattr(row, name, getattr(candidate, name))
    row.fingerprint, row.not_after, row.status, row.status_reason = fingerprint, not_after, status, None
    row.alerted_days = None  # new material: the certificate watch alerts afresh
    row.updated_at = row.last_checked_at = now
    session.add(row)
    session.flush()
    return row
