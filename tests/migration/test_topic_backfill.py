"""Migration 0006 reads each stored APNs certificate's topic from the certificate: an MDM push goes to the
topic of the certificate subject's UID [A-SEND], whatever was typed when it was uploaded. Run on an SQLite
and a PostgreSQL database holding rows as revision 0005 stored them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from models.migrations.runner import upgrade
from sandbox.tls import issue_client_certificate, make_ca, mdm_topic
from tests.services import new_postgres_database

INSERT = sa.text(
    "INSERT INTO push_credential (id, organization_id, provider, kind, secret, fingerprint, key_id, "
    "topic, environment, status, created_at, updated_at) VALUES (:id, :org, :provider, :kind, :secret, "
    "'-', :key_id, :topic, 'production', 'valid', :at, :at)"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def at_0005(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'at_0005.db'}"
        upgrade(url, "0005")
        yield url
        return
    with new_postgres_database("mdmq_topic_backfill") as url:
        upgrade(url, "0005")
        yield url


def _bundle(topic: str) -> str:
    issued = issue_client_certificate(make_ca(), topic)
    return (issued.cert_pem + issued.key_pem).decode()


def _topics(url: str) -> dict[str, str | None]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT organization_id, topic FROM push_credential")).all()
    engine.dispose()
    return {org: topic for org, topic in rows}


def test_the_upgrade_reads_each_certificates_topic_from_its_subject_uid(at_0005: str) -> None:
    typed_wrong, typed_right = mdm_topic(), mdm_topic()
    rows = {
        "wrong": ("apns", "apns_certificate", _bundle(typed_wrong), "com.apple.mgmt.External.typed-by-hand"),
        "right": ("apns", "apns_certificate", _bundle(typed_right), typed_right),
        "unreadable": (
            "apns",
            "apns_certificate",
            "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----",
            "t",
        ),
        "token-key": (
            "apns",
            "apns_token",
            "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----",
            "p8-topic",
        ),
        "fcm": ("fcm", "fcm_service_account", "{}", None),
    }
    engine = sa.create_engine(at_0005)
    with engine.begin() as connection:
        at = datetime(2026, 12, 1, tzinfo=UTC)
        for number, (org, (provider, kind, secret, topic)) in enumerate(rows.items()):
            connection.execute(
                sa.text("INSERT INTO organization (id, name, created_at) VALUES (:id, :id, :at)"),
                {"id": org, "at": at},
            )
            connection.execute(
                INSERT,
                {"id": f"{number:024x}", "org": org, "provider": provider, "kind": kind, "secret": secret,
                 "key_id": "KEY1234567" if kind == "apns_token" else None, "topic": topic, "at": at},
            )  # fmt: skip
    engine.dispose()

    upgrade(at_0005, "0006")

    assert _topics(at_0005) == {
        "wrong": typed_wrong,  # read from the certificate
        "right": typed_right,
        "unreadable": "t",  # left as it was: the dispatch refuses the row and holds its organization
        "token-key": "p8-topic",  # no certificate to read: refused at dispatch, its topic kept
        "fcm": None,
    }
