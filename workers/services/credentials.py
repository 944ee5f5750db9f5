"""Storing a push credential: validated, its expiry read, a change of APNs topic guarded, and what was held
for the organization's previous credential released."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from config.errors import MdmqError
from models.database import Session
from models.enums import CredentialKind, CredentialStatus, Provider, PushEnvironment
from models.ids import new_id
from models.store.audit import CREDENTIAL_UPLOADED, record_audit_event
from models.store.credentials import save_credential
from models.store.dispatch import push_credential
from models.store.holds import release_provider, restore_tokens
from models.store.organizations import lock_organization
from models.tables import PushCredential
from models.types import utcnow
from workers.providers.credentials import (
    ApnsCertificate,
    Credential,
    FcmServiceAccount,
    InvalidCredential,
    require_printable,
)
from workers.services.credential_rows import credential_from_row, require_kind_of
from workers.services.key_checks import KeyChecks

# Within this of its expiry a credential is `expiring`: the certificate watch alerts from 30 days out.
EXPIRING_WITHIN = timedelta(days=30)
TOPIC_CHANGED = "credential.topic_changed"  # the audit action of a forced change of APNs topic
CLI_ACTOR = "cli"  # the audit actor of an upload that no API token made
IN_PROCESS = KeyChecks()  # the key checks of a caller that passes none: in its own thread

log = logging.getLogger(__name__)


class TopicChange(MdmqError):
    """The APNs certificate's topic differs from the stored credential's: nothing was stored."""

    def __init__(self, old_topic: str, new_topic: str) -> None:
        self.old_topic, self.new_topic = old_topic, new_topic
        # [A-SEND] devices are enrolled to the topic of the certificate they were enrolled under; [A-TU]
        # they send a new token (and topic) only when they enroll again.
        super().__init__(
            f"the certificate's topic {new_topic} differs from the stored {old_topic}: devices enrolled "
            "under the old topic stop answering until they re-enroll. Renew the push certificate with the "
            "same Apple ID instead (a renewal keeps the topic), or upload with force to change it"
        )


@dataclass(frozen=True)
class CredentialUpload:
    """What an operator uploads for one provider: the material and the fields its kind needs."""

    kind: CredentialKind
    secret: str = field(repr=False)
    key_id: str | None = None
    team_id: str | None = None
    topic: str | None = None  # APNs: read from the certificate; if given, it must be the certificate's
    project_id: str | None = None  # FCM: overrides the service account's own
    environment: PushEnvironment = PushEnvironment.production


@dataclass(frozen=True)
class StoredCredential:
    credential: PushCredential
    released: list[str]  # deployments that were held for this credential: enqueue them


def upload_credential(
    sessions: Callable[[], AbstractContextManager[Session]],
    enqueue: Callable[[Sequence[str]], object],
    *,
    organization_id: str,
    provider: Provider,
    upload: CredentialUpload,
    force: bool = False,
    actor: str = CLI_ACTOR,
    checks: KeyChecks = IN_PROCESS,
) -> StoredCredential:
    """`store_credential` in a transaction of its own, then what it released enqueued once committed: the
    API's upload and `mdmq credentials put` alike. Raises as `store_credential` does, having changed
    nothing."""
    with sessions() as session:
        stored = store_credential(
            session,
            organization_id=organization_id,
            provider=provider,
            kind=upload.kind,
            secret=upload.secret,
            key_id=upload.key_id,
            team_id=upload.team_id,
            topic=upload.topic,
            project_id=upload.project_id,
            environment=upload.environment,
            force=force,
            actor=actor,
            checks=checks,
        )
    enqueue(stored.released)
    return stored


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
    force: bool = False,
    actor: str = CLI_ACTOR,
    checks: KeyChecks = IN_PROCESS,
    now: datetime | None = None,
) -> StoredCredential:
    """Validate and store the organization's credential for `provider`, replacing the previous one.

    Raises `InvalidCredential` (naming the field, never its value) when the material is unusable: a kind of
    another provider, an APNs token key (MDM is certificate-only), a control character in a field, a
    certificate that is not an MDM push certificate or a `topic` other than its own, a key mdmq does not
    take (an RSA key over 4096 bits, refused before its costly check runs; an EC key on another curve
    than P-256) or an inconsistent RSA key (`checks` runs that check, and raises `ChecksBusy` when it has
    no room for it). Raises `TopicChange` when an APNs certificate's topic differs from the stored
    credential's, unless `force`; a forced change is recorded as an audit event of `actor` (an API
    token's id, or `cli`) in this transaction, as is every stored upload. Each error changes nothing.
    Fields the kind does not use are not stored. Running workers pick the new material up by its
    fingerprint on their next dispatch.
    """
    now = now or utcnow()
    for name, value in (
        ("the topic", topic), ("the project id", project_id), ("the key id", key_id), ("the team id", team_id)
    ):  # fmt: skip
        require_printable(name, value)
    require_kind_of(provider, kind)
    candidate = PushCredential(
        id=new_id(),
        organization_id=organization_id,
        provider=provider,
        kind=kind,
        secret=secret,
        fingerprint="",
        project_id=project_id if kind is CredentialKind.fcm_service_account else None,
        environment=environment,
    )
    material = credential_from_row(candidate)  # bounded: the costly check comes last, from `checks`
    candidate.topic, candidate.project_id = _read_back(material, given_topic=topic)
    # Before the lock and the first statement: the session holds no connection while it waits.
    checks.require_consistent(material)
    # Locked: of two uploads at once, the second judges the topic against the first's, and updates the row
    # the first inserted (when there was none, the organization's row is what the second waits on).
    lock_organization(session, organization_id=organization_id)
    existing = push_credential(session, organization_id=organization_id, provider=provider, lock=True)
    _guard_topic(session, existing, candidate, force=force, actor=actor, now=now)
    not_after = material.not_after if isinstance(material, ApnsCertificate) else None
    status = _status(not_after, now)
    candidate.fingerprint, candidate.not_after, candidate.status = material.fingerprint, not_after, status
    candidate.updated_at = candidate.last_checked_at = now
    stored = save_credential(session, existing=existing, uploaded=candidate)
    usable = status in (CredentialStatus.valid, CredentialStatus.expiring)
    released = _release_held(session, organization_id=organization_id, provider=provider) if usable else []
    _audit_upload(session, stored, released=len(released), actor=actor, now=now)
    return StoredCredential(stored, released)


def _audit_upload(session: Session, row: PushCredential, *, released: int, actor: str, now: datetime) -> None:
    """The upload in the audit record: what was stored, by its fingerprint (a hash), never the material."""
    detail = {
        "provider": row.provider.value,
        "kind": row.kind.value,
        "fingerprint": row.fingerprint,
        "topic": row.topic,
        "projectId": row.project_id,
        "environment": row.environment.value,
        "status": row.status.value,
        "released": released,
    }
    record_audit_event(
        session,
        organization_id=row.organization_id,
        actor=actor,
        action=CREDENTIAL_UPLOADED,
        detail=detail,
        now=now,
    )


def _read_back(material: Credential, *, given_topic: str | None) -> tuple[str | None, str | None]:
    """The topic and project id the row keeps: the certificate's topic and the service account's project,
    each as the material says."""
    if isinstance(material, ApnsCertificate):
        # [A-SEND] the topic is the certificate subject's UID: a caller cannot override it.
        if given_topic is not None and given_topic != material.topic:
            raise InvalidCredential(
                "the topic is read from the certificate (its subject UID) and the one given differs: "
                "leave it out, or upload the certificate of that topic"
            )
        return material.topic, None
    if isinstance(material, FcmServiceAccount):
        return None, material.project_id
    return None, None


def _guard_topic(
    session: Session,
    existing: PushCredential | None,
    candidate: PushCredential,
    *,
    force: bool,
    actor: str,
    now: datetime,
) -> None:
    """`TopicChange` when the stored APNs push certificate's topic differs from the candidate's, unless
    `force`; a forced change is recorded. A stored .p8 key's topic was typed, never one devices enrolled
    with (MDM takes certificates only): replacing it changes no enrollment."""
    if existing is None or existing.kind is not CredentialKind.apns_certificate:
        return
    if existing.topic is None or candidate.topic is None:
        return
    if existing.topic == candidate.topic:
        return
    if not force:
        raise TopicChange(existing.topic, candidate.topic)
    detail = {"provider": candidate.provider.value, "old_topic": existing.topic, "new_topic": candidate.topic}
    record_audit_event(
        session,
        organization_id=candidate.organization_id,
        actor=actor,
        action=TOPIC_CHANGED,
        detail=detail,
        now=now,
    )


def _status(not_after: datetime | None, now: datetime) -> CredentialStatus:
    if not_after is not None and not_after <= now:
        return CredentialStatus.expired
    if not_after is not None and not_after - now <= EXPIRING_WITHIN:
        return CredentialStatus.expiring
    return CredentialStatus.valid


def _release_held(session: Session, *, organization_id: str, provider: Provider) -> list[str]:
    """Everything held for the organization's previous `provider` credential, released now that a usable
    one is stored (the one place that does it); the deployments' ids, for the caller to enqueue once the
    transaction has committed. Tokens that a dead-token answer invalidated, an answer a wrong credential
    gets for every device, are tried once more with the new credential."""
    restored = restore_tokens(
        session, organization_id=organization_id, provider=provider, ambiguous_only=True
    )
    if restored:
        log.info("%d device tokens invalidated by a dead-token answer are tried again", restored)
    return release_provider(session, organization_id=organization_id, provider=provider)
