"""Credential uploads over real HTTP on PostgreSQL: an MDM push certificate is validated, read back and
never returned; a .p8 key, another provider's kind, a foreign topic and control characters are 400s naming
the field; a change of topic is a 409 unless forced, and a forced one is audited."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlmodel import select

from models.enums import Platform, Provider
from models.statuses import Kind
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.audit import audit_events
from models.store.devices import NewDevice, add_devices
from models.store.dispatch import hold_for_credential
from models.store.tokens import create_token
from models.tables import Deployment
from sandbox.fleet import FCM_PROJECT_ID
from sandbox.tls import issue_client_certificate, make_ca, mdm_topic
from tests.integration.api.conftest import Client
from tests.integration.providers.conftest import private_pem
from workers.app import App
from workers.providers.credentials import MDM_NEEDS_CERTIFICATE
from workers.services.credentials import TOPIC_CHANGED

BASE = "/v1/organizations/acme/credentials"


@pytest.fixture
def manager(mdmq: App) -> tuple[str, str]:
    """An API token that manages acme's credentials: its id and its secret."""
    with mdmq.session() as s:
        ensure_organization(s, organization_id="acme")
        row, secret = create_token(s, organization_id="acme", permissions=["mdm.credential.manage"])
    return row.id, secret


def put(client: Client, token: str, provider: str, body: dict[str, Any]) -> requests.Response:
    return client.http.put(
        f"{client.base_url}{BASE}/{provider}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def listed(client: Client, token: str) -> list[dict[str, Any]]:
    answer = client.get(BASE, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["data"])


def certificate(topic: str) -> dict[str, Any]:
    """An upload of an MDM push certificate for `topic`: the certificate and its key, one PEM text."""
    issued = issue_client_certificate(make_ca(), topic, days=365)
    return {"kind": "apns_certificate", "secret": (issued.cert_pem + issued.key_pem).decode()}


def error(response: requests.Response) -> tuple[int, int, str]:
    body = response.json()
    return response.status_code, body["error"]["code"], body["error"]["message"]


def test_a_certificate_upload_reads_the_topic_and_expiry_back_and_never_returns_the_secret(
    client: Client, manager: tuple[str, str]
) -> None:
    _, token = manager
    topic = mdm_topic()
    body = certificate(topic)

    response = put(client, token, "apns", body | {"environment": "sandbox"})

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["provider"], data["kind"], data["status"], data["released"]) == (
        "apns", "apns_certificate", "valid", 0,
    )  # fmt: skip
    assert (data["topic"], data["environment"]) == (topic, "sandbox"), "[A-SEND] the subject's UID"
    assert data["notAfter"] is not None
    assert "PRIVATE KEY" not in response.text
    assert "CERTIFICATE-----" not in response.text
    assert [c["topic"] for c in listed(client, token)] == [topic]

    broken = body | {
        "secret": body["secret"].replace("-----BEGIN CERTIFICATE-----\n", "-----BEGIN CERTIFICATE-----\nAA")
    }
    code, number, message = error(put(client, token, "apns", broken))
    assert (code, number) == (400, 4000)
    assert "PRIVATE" not in message, "the error names the field, never the value"
    assert [c["topic"] for c in listed(client, token)] == [topic], "a refused upload changes nothing"


def test_an_apns_token_key_is_refused_because_mdm_needs_the_push_certificate(
    client: Client, manager: tuple[str, str]
) -> None:
    """[A-MDMPUSH] MDM doesn't support token-based pushes: a .p8 key can never wake a device."""
    _, token = manager
    pem = private_pem(ec.generate_private_key(ec.SECP256R1()))
    body = {
        "kind": "apns_token",
        "secret": pem,
        "keyId": "KEY1234567",
        "teamId": "TEAM123456",
        "topic": mdm_topic(),
    }

    code, number, message = error(put(client, token, "apns", body))

    assert (code, number) == (400, 4000)
    assert message == f"Invalid request: {MDM_NEEDS_CERTIFICATE}"
    assert "PRIVATE" not in message
    assert listed(client, token) == []


def test_the_topic_is_the_certificates_and_must_be_an_mdm_topic(
    client: Client, manager: tuple[str, str]
) -> None:
    """[A-SEND] the topic is the certificate subject's UID, com.apple.mgmt.External.<uuid> for MDM."""
    _, token = manager
    topic = mdm_topic()

    code, number, message = error(put(client, token, "apns", certificate(topic) | {"topic": mdm_topic()}))
    assert (code, number) == (400, 4000)
    assert "the topic is read from the certificate" in message
    code, number, message = error(put(client, token, "apns", certificate("com.example.app")))
    assert (code, number) == (400, 4000)
    assert "not an MDM push certificate" in message
    assert listed(client, token) == []

    same = put(client, token, "apns", certificate(topic) | {"topic": topic})
    assert same.status_code == 200, "the certificate's own topic may be given"


def test_a_change_of_topic_is_a_409_unless_forced_and_a_forced_one_is_audited(
    client: Client, mdmq: App, manager: tuple[str, str]
) -> None:
    token_id, token = manager
    old, new = mdm_topic(), mdm_topic()
    assert put(client, token, "apns", certificate(old)).status_code == 200
    renewed = put(client, token, "apns", certificate(old))
    assert renewed.status_code == 200, "a renewal keeps the topic: no conflict"

    code, number, message = error(put(client, token, "apns", certificate(new)))

    assert (code, number) == (409, 4009)
    assert message.startswith("Conflict: the certificate's topic")
    assert "stop answering until they re-enroll" in message
    assert "same Apple ID" in message
    assert "force" in message
    assert [c["topic"] for c in listed(client, token)] == [old], "refused: nothing changed"
    with mdmq.session() as s:
        assert audit_events(s, organization_id="acme", action=TOPIC_CHANGED) == []

    forced = put(client, token, "apns", certificate(new) | {"force": True})

    assert forced.status_code == 200, forced.text
    assert forced.json()["data"]["topic"] == new
    with mdmq.session() as s:
        events = audit_events(s, organization_id="acme", action=TOPIC_CHANGED)
    assert [(e.action, e.actor, e.detail) for e in events] == [
        (TOPIC_CHANGED, token_id, {"provider": "apns", "old_topic": old, "new_topic": new})
    ]


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        ("fcm", {"kind": "aosp_api_key", "secret": "k" * 32}),
        ("aosp", {"kind": "fcm_service_account", "secret": "{}"}),
        ("apns", {"kind": "aosp_api_key", "secret": "k" * 32}),
    ],
)
def test_a_kind_of_another_provider_is_refused(
    client: Client, manager: tuple[str, str], provider: str, body: dict[str, Any]
) -> None:
    _, token = manager
    code, number, message = error(put(client, token, provider, body))
    assert (code, number) == (400, 4000)
    assert f"a credential for {provider} is of kind" in message
    assert listed(client, token) == []


@pytest.mark.parametrize(
    ("field", "named"),
    [
        ("topic", "the topic"),
        ("projectId", "the project id"),
        ("keyId", "the key id"),
        ("teamId", "the team id"),
    ],
)
@pytest.mark.parametrize("character", ["\n", "\r", "\x1b", "\x7f", "\u200b", "\u2028"])
def test_a_control_character_in_a_field_is_a_400_naming_the_field_never_the_value(
    client: Client, manager: tuple[str, str], field: str, named: str, character: str
) -> None:
    _, token = manager
    value = f"SECRETISH{character}x-injected: 1"

    code, number, message = error(
        put(client, token, "aosp", {"kind": "aosp_api_key", "secret": "k" * 32, field: value})
    )

    assert (code, number) == (400, 4000)
    assert message == f"Invalid request: {named} contains a control or non-printing character"
    assert listed(client, token) == []


@pytest.fixture(scope="module")
def service_account() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return json.dumps(
        {
            "type": "service_account",
            "client_email": f"push@{FCM_PROJECT_ID}.iam.gserviceaccount.com",
            "private_key": private_pem(key),
            "project_id": FCM_PROJECT_ID,
        }
    )


@pytest.mark.parametrize("project_id", ["a/../../b", "acme%2fother", "Acme", "short", "acme-mdm-"])
def test_a_project_id_that_is_not_a_google_cloud_project_id_never_reaches_the_url(
    client: Client, manager: tuple[str, str], service_account: str, project_id: str
) -> None:
    """[F-SEND] the project id is a segment of the send URL's path."""
    _, token = manager
    body = {"kind": "fcm_service_account", "secret": service_account, "projectId": project_id}

    code, number, message = error(put(client, token, "fcm", body))

    assert (code, number) == (400, 4000)
    assert "the project id is not a Google Cloud project id" in message
    assert project_id not in message.replace("project id", "")
    assert listed(client, token) == []


def test_a_service_accounts_project_is_read_back_and_fields_it_does_not_use_are_not_kept(
    client: Client, manager: tuple[str, str], service_account: str
) -> None:
    _, token = manager
    body = {"kind": "fcm_service_account", "secret": service_account, "topic": "ignored", "keyId": "K1"}

    response = put(client, token, "fcm", body)

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["projectId"], data["topic"], data["keyId"]) == (FCM_PROJECT_ID, None, None)
    assert "PRIVATE" not in response.text


def test_an_upload_releases_and_enqueues_what_was_held(
    client: Client, mdmq: App, manager: tuple[str, str]
) -> None:
    _, token = manager
    with mdmq.session() as s:
        devices = add_devices(
            s,
            organization_id="acme",
            devices=[NewDevice(Platform.ios, f"{i:064x}", push_magic="m") for i in range(2)],
        )
        ids = create_deployments(
            s,
            organization_id="acme",
            deployments=[NewDeployment(device_id=d, kind=Kind.profile) for d in devices],
            redeliver_after_s=None,
        )
        assert hold_for_credential(s, organization_id="acme", provider=Provider.apns, reason="expired") == 2

    response = put(client, token, "apns", certificate(mdm_topic()))

    assert response.status_code == 200, response.text
    assert response.json()["data"]["released"] == 2
    with mdmq.session() as s:
        rows = list(s.exec(select(Deployment).where(Deployment.id.in_(ids))))  # type: ignore[attr-defined]
    assert [(d.hold_reason, d.enqueued_at is not None) for d in rows] == [(None, True), (None, True)]
