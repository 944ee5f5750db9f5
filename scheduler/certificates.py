"""The certificate watch: every certificate and key whose expiry or revocation would silently stop mdmq.

- Push credentials: an APNs certificate by its `not_after`; an FCM service account and an AOSP API key by
  one cheap authenticated call to the provider (a push to a token no device has: the provider checks the
  credential before the token). Refused is reported as expired is; so is a credential mdmq cannot use (a
  stored APNs token key: MDM pushes are certificate-only), with the reason, and no call made.
- Watched certificates (`MDMQ_WATCH_FILES`, `MDMQ_WATCH_ENDPOINTS`): PEM files, and the certificate a TLS
  endpoint presents (the MDM server's own, the APNs host).

Each crossing of a threshold (30/14/7/1 days by default) is logged, counted in the expiry gauge and sent to
Sentry as a message, once: the row remembers the last threshold it alerted. An expired or refused push
credential is marked so, and its organization's deployments for that provider are held, as the pipeline
holds them when a push is refused; storing a valid credential releases them.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import sentry_sdk
from cryptography import x509
from prometheus_client import Gauge
from sentry_sdk.integrations.logging import ignore_logger

from models.database import Session
from models.enums import PROVIDER_NAMES, CertificateSource, CredentialKind, CredentialStatus, Provider
from models.secrets import CannotDecrypt
from models.store.certificates import record_watched_check, watched_certificate, watched_certificates
from models.store.certificates import watch_certificates as watch_targets
from models.store.credentials import (
    CredentialState,
    credentials_to_check,
    lock_credential,
    record_credential_check,
)
from models.store.dispatch import PushTarget, hold_for_credential
from models.store.holds import NewHold, hold_provider
from models.tables import PushCredential, WatchedCertificate
from scheduler.lease import still_leading
from workers.app import App
from workers.providers.base import CredentialRejected, Outcome, Push
from workers.providers.credentials import InvalidCredential
from workers.push_gateway import PushGateway
from workers.services.credential_rows import credential_from_row
from workers.services.dispatch import HOLD_FIRST_PROBE_S, wake_up

log = logging.getLogger(__name__)
# This module sends each alert to Sentry itself, once; its log lines must not become a second event.
ignore_logger(__name__)

EXPIRY = Gauge(
    "mdmq_certificate_expiry_timestamp_seconds",
    "When a watched certificate expires (Unix time): push credentials, PEM files, TLS endpoints.",
    ["source", "name"],
)
CREDENTIAL_ACCEPTED = Gauge(
    "mdmq_push_credential_accepted",
    "1 when the provider accepted the push credential at its last check, 0 when it refused it.",
    ["organization", "provider"],
)
_REFUSED = frozenset({CredentialStatus.revoked, CredentialStatus.invalid})
TLS_TIMEOUT_S = 10.0
CREDENTIALS_PER_PASS = 500

# A push to a token no device has: the provider authenticates the credential first, then refuses the token.
_PROBE_TOKENS = {Provider.apns: "0" * 64, Provider.fcm: "mdmq-credential-check", Provider.aosp: "0" * 22}


@dataclass(frozen=True)
class Verdict:
    """What one check found: the expiry when there is one, or why the credential was refused: by the
    provider, or by mdmq itself when it cannot be used (`unusable`)."""

    not_after: datetime | None
    refused: str | None = None
    fingerprint: str | None = None  # of the material checked: a verdict applies to that material only
    unusable: bool = False


def crossed_threshold(days_left: float, thresholds: tuple[int, ...]) -> int | None:
    """The smallest threshold `days_left` is at or under; 0 once expired; None while above them all."""
    if days_left <= 0:
        return 0
    under = [t for t in thresholds if days_left <= t]
    return min(under) if under else None


def show_credentials(states: list[CredentialState]) -> None:
    """Each push credential's gauges from its row, as the upload or the last check left it: refused
    (revoked, unusable) is 0, and an APNs certificate's expiry is its `not_after`. The gauges job calls
    this, so an upload shows within its interval rather than at the next pass of this watch."""
    for state in states:
        accepted = 0 if state.status in _REFUSED else 1
        CREDENTIAL_ACCEPTED.labels(organization=state.organization_id, provider=state.provider.value).set(
            accepted
        )
        if state.not_after is not None:
            name = f"{state.organization_id}/{state.provider.value}"
            EXPIRY.labels(source="push_credential", name=name).set(state.not_after.timestamp())


def watch_certificates(app: App, now: datetime) -> int:
    """One pass over every push credential and watched certificate; returns how many alerted this pass."""
    alerts = 0
    with app.session() as s:
        # The least recently checked first, at most CREDENTIALS_PER_PASS: each is a call to a provider.
        credentials = credentials_to_check(s, limit=CREDENTIALS_PER_PASS)
    for credential in credentials:
        if not still_leading():
            return alerts
        verdict = _check_credential(app.gateway, credential)
        with app.session() as s:
            alerts += _apply_to_credential(s, credential.id, verdict, app.settings.thresholds_days, now)
    _register_watched(app)
    with app.session() as s:
        watched = watched_certificates(s)
    for certificate in watched:
        if not still_leading():  # each check may take TLS_TIMEOUT_S: a stopping scheduler stops here
            return alerts
        found = _check_watched(certificate)
        with app.session() as s:
            alerts += _apply_to_watched(s, certificate.id, found, app.settings.thresholds_days, now)
    return alerts


def _check_credential(gateway: PushGateway, row: PushCredential) -> Verdict:
    checked = Verdict(row.not_after, fingerprint=row.fingerprint)
    try:
        material = credential_from_row(row)
    except InvalidCredential as e:  # e.g. an APNs token key: [A-MDMPUSH] MDM pushes are certificate-only
        return replace(checked, refused=str(e), unusable=True)
    except CannotDecrypt as e:  # the key is wrong, not the credential: no verdict, nothing changes
        log.error("credential check of %s %s: %s", row.organization_id, row.provider, e)
        return checked
    if row.kind is CredentialKind.apns_certificate:
        return checked
    try:
        results = gateway.send(f"credential-check:{row.organization_id}", material, [_probe(row.provider)])
    except (InvalidCredential, CredentialRejected) as e:
        return replace(checked, refused=str(e))
    except Exception as e:  # the provider could not be asked: no verdict this pass, nothing changes
        log.warning(
            "credential check of %s %s failed: %s", row.organization_id, row.provider, type(e).__name__
        )
        return checked
    refused = [r for r in results if r.outcome is Outcome.credential]
    return replace(checked, refused=refused[0].reason or "refused") if refused else checked


def _probe(provider: Provider) -> Push:
    return wake_up(
        PushTarget("credential-check", provider, _PROBE_TOKENS[provider], "credential-check", True)
    )


def _apply_to_credential(
    s: Session, credential_id: str, verdict: Verdict, thresholds: tuple[int, ...], now: datetime
) -> int:
    row = lock_credential(s, credential_id=credential_id)
    if row is None or row.fingerprint != verdict.fingerprint:  # replaced meanwhile: the verdict is stale
        return 0
    name = f"{row.organization_id}/{row.provider.value}"
    CREDENTIAL_ACCEPTED.labels(organization=row.organization_id, provider=row.provider.value).set(
        0 if verdict.refused else 1
    )
    if verdict.not_after is not None:
        EXPIRY.labels(source="push_credential", name=name).set(verdict.not_after.timestamp())
    finding = _judge(row, verdict, thresholds, now)
    if finding is None:
        record_credential_check(
            s,
            credential_id=row.id,
            checked_at=now,
            status=row.status,
            status_reason=row.status_reason,
            alerted_days=row.alerted_days,
        )
        return 0
    if finding.crossed == 0:
        _hold(s, row, finding.hold_reason or finding.what, finding.what, now)
    alerted_days, alerted = _alert_once(
        row.alerted_days, finding.crossed, finding.what, source="push_credential", name=name
    )
    record_credential_check(
        s,
        credential_id=row.id,
        checked_at=now,
        status=finding.status,
        status_reason=finding.status_reason,
        alerted_days=alerted_days,
    )
    return alerted


@dataclass(frozen=True)
class _Finding:
    """What a verdict means for a credential: its new status, the threshold crossed, the alert's text."""

    status: CredentialStatus
    status_reason: str | None
    crossed: int | None
    what: str
    hold_reason: str | None = None  # when it differs from `what`


def _judge(
    row: PushCredential, verdict: Verdict, thresholds: tuple[int, ...], now: datetime
) -> _Finding | None:
    provider = PROVIDER_NAMES[row.provider]
    if verdict.refused is not None:
        kind = row.kind.value.replace("_", " ")
        reason = verdict.refused[:500]
        if verdict.unusable:
            what = f"{provider} cannot use the {kind} of {row.organization_id}: {verdict.refused}"
            # The hold's reason as the dispatch words it, with room in its 200 characters for the fix.
            hold_reason = f"{provider} credential refused: {verdict.refused}"
            return _Finding(CredentialStatus.invalid, reason, 0, what, hold_reason)
        what = f"{provider} refused the {kind} of {row.organization_id}: {verdict.refused}"
        return _Finding(CredentialStatus.revoked, reason, 0, what)
    if verdict.not_after is None:
        return None
    days_left = (verdict.not_after - now).total_seconds() / 86_400
    crossed = crossed_threshold(days_left, thresholds)
    what = _expiry_text(f"the {provider} certificate of {row.organization_id}", verdict.not_after, days_left)
    if crossed == 0:
        return _Finding(CredentialStatus.expired, what, crossed, what)
    if crossed is not None and row.status is CredentialStatus.valid:
        return _Finding(CredentialStatus.expiring, row.status_reason, crossed, what)
    return _Finding(row.status, row.status_reason, crossed, what)


def _hold(s: Session, row: PushCredential, reason: str, what: str, now: datetime) -> None:
    """Hold the organization's deployments this credential wakes, as the dispatch holds them when a push is
    refused."""
    held = hold_for_credential(s, organization_id=row.organization_id, provider=row.provider, reason=reason)
    # Recorded as the dispatch records its holds, so that the scheduler's one-push probe releases it
    # when the fix was made elsewhere (a service-account key restored, an API key re-enabled).
    hold = NewHold(row.organization_id, row.provider, "credential", reason[:500], None, row.fingerprint)
    hold_provider(s, hold=hold, probe_at=now + timedelta(seconds=HOLD_FIRST_PROBE_S), now=now)
    if held:
        log.error("deployments held: %s", what, extra={"organization": row.organization_id, "held": held})


def _register_watched(app: App) -> None:
    wanted = [(CertificateSource.pem_file, f) for f in app.settings.watched_files] + [
        (CertificateSource.tls_endpoint, e) for e in app.settings.watched_endpoints
    ]
    if not wanted:
        return
    with app.session() as s:
        watch_targets(s, targets=wanted)


def _check_watched(certificate: WatchedCertificate) -> Verdict | str:
    """The certificate's expiry, or why it could not be read (an error text)."""
    try:
        if certificate.source is CertificateSource.pem_file:
            pem = Path(certificate.target).read_bytes()
        else:
            pem = _endpoint_certificate(certificate.target).encode()
        return Verdict(x509.load_pem_x509_certificate(pem).not_valid_after_utc)
    except (OSError, ValueError, ssl.SSLError) as e:
        return f"{type(e).__name__}: {e}"[:500]


def _endpoint_certificate(target: str) -> str:
    """The PEM certificate `host:port` presents, whoever signed it and however expired: it is read to be
    watched, not trusted."""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {target!r}")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # reading the certificate, not trusting the peer
    with (
        socket.create_connection((host, int(port)), timeout=TLS_TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ValueError(f"{target} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der)


def _apply_to_watched(
    s: Session, certificate_id: int | None, verdict: Verdict | str, thresholds: tuple[int, ...], now: datetime
) -> int:
    row = None if certificate_id is None else watched_certificate(s, certificate_id=certificate_id)
    if row is None or row.id is None:
        return 0
    if isinstance(verdict, str):
        if row.last_error != verdict:
            log.warning("watched certificate %s could not be read: %s", row.target, verdict)
        record_watched_check(
            s,
            certificate_id=row.id,
            checked_at=now,
            not_after=row.not_after,
            last_error=verdict,
            alerted_days=row.alerted_days,
        )
        return 0
    assert verdict.not_after is not None
    EXPIRY.labels(source=row.source.value, name=row.target).set(verdict.not_after.timestamp())
    days_left = (verdict.not_after - now).total_seconds() / 86_400
    what = _expiry_text(f"the certificate of {row.target}", verdict.not_after, days_left)
    crossed = crossed_threshold(days_left, thresholds)
    alerted_days, alerted = _alert_once(
        row.alerted_days, crossed, what, source=row.source.value, name=row.target
    )
    record_watched_check(
        s,
        certificate_id=row.id,
        checked_at=now,
        not_after=verdict.not_after,
        last_error=None,
        alerted_days=alerted_days,
    )
    return alerted


def _expiry_text(subject: str, not_after: datetime, days_left: float) -> str:
    when = f"{not_after:%Y-%m-%d %H:%M} UTC"
    if days_left <= 0:
        return f"{subject} expired on {when}"
    return f"{subject} expires in {int(days_left)} days, on {when}"


def _alert_once(
    alerted_days: int | None, crossed: int | None, what: str, *, source: str, name: str
) -> tuple[int | None, int]:
    """Log and send `what` when `crossed` is a threshold not alerted yet (`alerted_days` is the last one
    alerted); the threshold to remember, and 1 if alerted."""
    if crossed is None:
        return None, 0  # renewed, or never near: the next approach alerts afresh
    if alerted_days is not None and crossed >= alerted_days:
        return alerted_days, 0
    level = logging.ERROR if crossed == 0 else logging.WARNING
    threshold = "expired" if crossed == 0 else f"{crossed}-day threshold"
    log.log(
        level, "certificate watch: %s (%s)", what, threshold, extra={"source": source, "certificate": name}
    )
    if sentry_sdk.get_client().is_active():
        sentry_sdk.capture_message(f"certificate watch: {what}", level="error" if crossed == 0 else "warning")
    return crossed, 1
