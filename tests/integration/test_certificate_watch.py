"""The certificate watch on PostgreSQL with the sandbox: PEM files that expire in 40, 20, 10 and 3 days and
yesterday, a TLS endpoint on loopback whose certificate expires in 5 days, an APNs token key stored before
MDM became certificate-only, and an expired APNs certificate. Each lands in the right state, gauge and log
line, once."""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sentry_sdk
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from config.settings import Settings
from models.enums import CredentialKind, CredentialStatus, Provider, PushEnvironment
from models.statuses import Kind
from models.store import ensure_organization
from models.store.sweeps import mark_enqueued
from models.tables import Deployment, PushCredential, WatchedCertificate
from models.types import utcnow
from sandbox import DeviceRegistry, SandboxThread
from sandbox.tls import (
    ServerTls,
    issue_client_certificate,
    issue_mdm_push_certificate,
    issue_server_certificate,
    make_ca,
)
from scheduler.certificates import EXPIRY, crossed_threshold, watch_certificates
from tests.conftest import MakeDeployments
from tests.integration.providers.conftest import KEY_ID, TEAM_ID, TOPIC, private_pem
from tests.sentry import Captured
from workers.app import App
from workers.providers.credentials import MDM_NEEDS_CERTIFICATE
from workers.services.credentials import store_credential

DAYS = {"forty": 40, "twenty": 20, "ten": 10, "three": 3}
PROJECT = "watch-project"
FCM_EMAIL = f"watch@{PROJECT}.iam.gserviceaccount.com"
AOSP_KEY = secrets.token_hex(16)


def test_thresholds_are_crossed_at_or_under_each() -> None:
    thresholds = (30, 14, 7, 1)
    assert [crossed_threshold(d, thresholds) for d in (40, 30, 29.5, 14, 8, 7, 1.5, 1, 0.2, 0, -3)] == [
        None, 30, 30, 14, 14, 7, 7, 1, 1, 0, 0,
    ]  # fmt: skip


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, Path]:
    ca = make_ca(days=400)
    files = {}
    for name, days in DAYS.items():
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_bytes(issue_client_certificate(ca, TOPIC, days=days).cert_pem)
    ten_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    files["yesterday"] = tmp_path / "yesterday.pem"
    files["yesterday"].write_bytes(
        issue_client_certificate(ca, TOPIC, not_before=ten_days_ago, days=9).cert_pem
    )
    return files


@pytest.fixture
def world(
    pg: Engine, postgres_url: str, pem_files: dict[str, Path], tmp_path: Path
) -> Iterator[tuple[App, DeviceRegistry]]:
    registry = DeviceRegistry()
    # [A-MDMPUSH] the APNs credential is the MDM push certificate: watched by its expiry, a year out.
    push_certificate = issue_mdm_push_certificate(registry, topic=TOPIC, days=400)
    ca = make_ca(days=400)
    tls = ServerTls(ca, issue_server_certificate(ca, days=5))
    ca_file = tmp_path / "sandbox-ca.pem"
    ca_file.write_bytes(tls.ca_pem)
    with SandboxThread(registry, tls=tls) as sandbox:
        settings = Settings(
            database_url=postgres_url,
            broker_url="stub://",
            apns_url=sandbox.apns_url,
            apns_sandbox_url=sandbox.apns_url,
            fcm_url=sandbox.fcm_url,
            fcm_token_url=f"{sandbox.fcm_url}/token",
            aosp_url=sandbox.aosp_url,
            push_ca_file=str(ca_file),
            watch_files=",".join(str(p) for p in pem_files.values()),
            watch_endpoints=f"127.0.0.1:{sandbox.ports['apns']}",
        )
        app = App(settings)
        with app.session() as s:
            ensure_organization(s, organization_id="acme")
            store_credential(
                s,
                organization_id="acme",
                provider=Provider.apns,
                kind=CredentialKind.apns_certificate,
                secret=push_certificate.pem_bundle,
                environment=PushEnvironment.sandbox,
            )
            for provider, kind, secret in (
                (Provider.fcm, CredentialKind.fcm_service_account, _service_account(registry)),
                (Provider.aosp, CredentialKind.aosp_api_key, AOSP_KEY),
            ):
                store_credential(
                    s, organization_id="acme", provider=provider, kind=kind, secret=secret, project_id=PROJECT
                )
        registry.add_aosp_api_key(AOSP_KEY)
        yield app, registry
        app.close()


def _as_a_token_key_stored_before(pg: Engine) -> None:
    """The APNs row made a .p8 key with its key id, team id and topic, as uploads stored them before."""
    key = private_pem(ec.generate_private_key(ec.SECP256R1()))
    with Session(pg) as s, s.begin():
        row = s.exec(select(PushCredential).where(PushCredential.provider == Provider.apns)).one()
        row.kind, row.secret, row.key_id, row.team_id = CredentialKind.apns_token, key, KEY_ID, TEAM_ID
        row.not_after = None
        s.add(row)


def _service_account(registry: DeviceRegistry) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    registry.add_fcm_service_account(FCM_EMAIL, key.public_key(), project_id=PROJECT)
    return json.dumps(
        {
            "type": "service_account",
            "client_email": FCM_EMAIL,
            "private_key": private_pem(key),
            "project_id": PROJECT,
            "private_key_id": "watch",
        }
    )


def test_each_certificate_lands_in_its_state_gauge_and_log_line_once(
    pg: Engine,
    world: tuple[App, DeviceRegistry],
    pem_files: dict[str, Path],
    make_deployments: MakeDeployments,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = world
    queued = make_deployments(pg, Kind.profile, count=3, organization_id="acme")
    with Session(pg) as s, s.begin():
        mark_enqueued(s, ids=queued, now=utcnow(), redeliver_at=utcnow())
    _as_a_token_key_stored_before(pg)

    with caplog.at_level(logging.WARNING, logger="scheduler.certificates"):
        first = watch_certificates(app, utcnow())
        second = watch_certificates(app, utcnow())

    with Session(pg) as s:
        watched = {w.target: w for w in s.exec(select(WatchedCertificate))}
        credential = s.exec(select(PushCredential).where(PushCredential.provider == Provider.apns)).one()
        others = {
            c.provider: c.status for c in s.exec(select(PushCredential)) if c.provider is not Provider.apns
        }
        held = [d.hold_reason for d in s.exec(select(Deployment))]
    alerted = {Path(t).stem if t.endswith(".pem") else "endpoint": w.alerted_days for t, w in watched.items()}
    assert alerted == {"forty": None, "twenty": 30, "ten": 14, "three": 7, "yesterday": 0, "endpoint": 7}
    # [A-MDMPUSH] MDM doesn't support token-based pushes: the key is unusable, held with the fix, no crash.
    assert (credential.status, credential.status_reason) == (CredentialStatus.invalid, MDM_NEEDS_CERTIFICATE)
    assert credential.alerted_days == 0
    assert others == {Provider.fcm: CredentialStatus.valid, Provider.aosp: CredentialStatus.valid}
    assert held == [f"APNs credential refused: {MDM_NEEDS_CERTIFICATE}"] * 3
    assert (first, second) == (6, 0), "five certificates and the key alerted once; nothing the second time"

    lines = [r.getMessage() for r in caplog.records if "certificate watch" in r.getMessage()]
    assert len(lines) == 6
    for name in ("twenty", "ten", "three", "yesterday"):
        assert sum(str(pem_files[name]) in line for line in lines) == 1, name
    assert any("expired on" in line and "yesterday" in line for line in lines)
    assert any(f"APNs cannot use the apns token of acme: {MDM_NEEDS_CERTIFICATE}" in line for line in lines)
    for name, days in DAYS.items():
        expiry = EXPIRY.labels(source="pem_file", name=str(pem_files[name]))._value.get()
        assert abs(expiry - (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).timestamp()) < 3_600


def test_an_expired_certificate_credential_is_marked_and_holds_its_deployments(
    pg: Engine, world: tuple[App, DeviceRegistry], make_deployments: MakeDeployments
) -> None:
    app, _ = world
    queued = make_deployments(pg, Kind.app, count=2, organization_id="acme")
    ca = make_ca(days=400)
    soon = issue_client_certificate(ca, TOPIC, days=3)
    with app.session() as s:
        stored = store_credential(
            s,
            organization_id="acme",
            provider=Provider.apns,
            kind=CredentialKind.apns_certificate,
            secret=(soon.cert_pem + soon.key_pem).decode(),
            topic=TOPIC,
            environment=PushEnvironment.sandbox,
        )
        assert stored.credential.status is CredentialStatus.expiring

    later = utcnow() + dt.timedelta(days=4)  # the certificate has expired by then
    assert watch_certificates(app, utcnow()) >= 1
    watch_certificates(app, later)

    with Session(pg) as s:
        credential = s.exec(select(PushCredential).where(PushCredential.provider == Provider.apns)).one()
        holds = {d.id: d.hold_reason for d in s.exec(select(Deployment))}
    assert (credential.status, credential.alerted_days) == (CredentialStatus.expired, 0)
    assert set(holds) == set(queued)
    assert all(reason is not None and "expired on" in reason for reason in holds.values())


def test_a_refused_service_account_and_api_key_are_reported_as_expired_once_to_sentry_too(
    pg: Engine, world: tuple[App, DeviceRegistry], sentry: Captured, caplog: pytest.LogCaptureFixture
) -> None:
    app, registry = world
    registry.remove_fcm_service_account(FCM_EMAIL)
    registry.revoke_aosp_api_key(AOSP_KEY)

    with caplog.at_level(logging.WARNING, logger="scheduler.certificates"):
        first = watch_certificates(app, utcnow())
        sentry_sdk.flush()
        sent_first = list(sentry.messages)
        second = watch_certificates(app, utcnow())
        sentry_sdk.flush()

    with Session(pg) as s:
        states = {c.provider: (c.status, c.alerted_days) for c in s.exec(select(PushCredential))}
    assert states == {
        Provider.apns: (CredentialStatus.valid, None),
        Provider.fcm: (CredentialStatus.revoked, 0),
        Provider.aosp: (CredentialStatus.revoked, 0),
    }
    assert (first, second) == (7, 0), "five certificates and two credentials, once"
    assert len(sent_first) == 7, "one Sentry message per alert, and no second one from the log line"
    assert sentry.messages == sent_first, "nothing more the second time"
    assert any("FCM refused" in m for m in sent_first)
    assert any("AOSP push provider refused" in m for m in sent_first)
    assert not [m for m in sent_first + caplog.messages if AOSP_KEY in m], "the API key is never written"
