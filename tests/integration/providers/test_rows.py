"""Stored credentials become providers: each kind of `PushCredential` row, read from the database, pushes
through the emulators (APNs with the MDM push certificate, over TLS); unusable rows are clear errors."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from models.enums import CredentialKind, Provider, PushEnvironment, TokenState
from models.ids import new_id
from models.statuses import Kind, Status
from models.store import ensure_organization
from models.tables import Deployment, Device, PushCredential
from sandbox import DeviceRegistry, Sandbox
from sandbox.tls import issue_client_certificate, issue_mdm_push_certificate, make_ca
from tests.conftest import MakeDeployments
from tests.helpers import sessions
from tests.integration.providers.conftest import (
    CLIENT_EMAIL,
    KEY_ID,
    PROJECT,
    TEAM_ID,
    TOPIC,
    apns_token,
    private_pem,
)
from workers.policy import RetryPolicy
from workers.providers.base import Outcome, Push, PushType
from workers.providers.credentials import MDM_NEEDS_CERTIFICATE, InvalidCredential
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.factory import ProviderFactory
from workers.push_gateway import PushGateway
from workers.services.credential_rows import credential_from_row
from workers.services.dispatch import dispatch_chunk


def _store(
    engine: Engine, provider: Provider, kind: CredentialKind, secret: str, **fields: Any
) -> PushCredential:
    with Session(engine, expire_on_commit=False) as session, session.begin():
        ensure_organization(session, organization_id="acme")
        row = PushCredential(id=new_id(), organization_id="acme", provider=provider, kind=kind, secret=secret,
                             fingerprint="-", environment=PushEnvironment.production, **fields)  # fmt: skip
        session.merge(row)
    with Session(engine) as session:
        stored = session.get(PushCredential, row.id)
        assert stored is not None
        return stored


def test_every_kind_of_stored_credential_pushes(
    pg: Engine, registry: DeviceRegistry, fcm_signing_key: rsa.RSAPrivateKey
) -> None:
    # [A-MDMPUSH] MDM pushes go with the push certificate, over TLS; its subject UID is the topic [A-SEND].
    certificate = issue_mdm_push_certificate(registry, topic=TOPIC, environments=("production",))
    aosp_key = secrets.token_hex(16)
    registry.add_aosp_api_key(aosp_key)
    apns_device, fcm_device, aosp_device = apns_token(), secrets.token_urlsafe(120), secrets.token_hex(11)
    registry.add_apns_device(apns_device, topic=TOPIC)
    registry.add_fcm_device(fcm_device, project_id=PROJECT)
    registry.add_aosp_device(aosp_device)
    service_account = json.dumps(
        {
            "type": "service_account",
            "client_email": CLIENT_EMAIL,
            "private_key": private_pem(fcm_signing_key),
            "project_id": PROJECT,
            "private_key_id": "kid-1",
        }
    )
    rows = {
        "apns": _store(pg, Provider.apns, CredentialKind.apns_certificate, certificate.pem_bundle),
        "fcm": _store(pg, Provider.fcm, CredentialKind.fcm_service_account, service_account),
        "aosp": _store(pg, Provider.aosp, CredentialKind.aosp_api_key, aosp_key),
    }
    pushes = {
        "apns": Push("d-apns", token=apns_device, push_type=PushType.mdm, push_magic="magic"),
        "fcm": Push("d-fcm", token=fcm_device, push_type=PushType.data, payload={"wake": "1"}),
        "aosp": Push("d-aosp", token=aosp_device, push_type=PushType.data, payload={"wake": "1"}),
    }
    outcomes: dict[str, Outcome] = {}

    async def scenario() -> None:
        async with Sandbox(registry, tls=True) as sandbox:
            assert sandbox.tls is not None
            endpoints = ProviderEndpoints.loopback(
                apns_port=sandbox.ports["apns"],
                fcm_port=sandbox.ports["fcm"],
                aosp_port=sandbox.ports["aosp"],
                tls_ca_pem=sandbox.tls.ca_pem.decode(),
            )
            factory = ProviderFactory(endpoints)
            for name, row in rows.items():
                provider = factory.provider_for("acme", credential_from_row(row))
                (result,) = await provider.send([pushes[name]])
                outcomes[name] = result.outcome
            await factory.close()

    asyncio.run(scenario())
    assert outcomes == {"apns": Outcome.accepted, "fcm": Outcome.accepted, "aosp": Outcome.accepted}


def test_a_certificate_row_is_read_from_its_pem_bundle() -> None:
    ca = make_ca()
    client = issue_client_certificate(ca, topic=TOPIC)
    bundle = (client.cert_pem + client.key_pem).decode()
    row = PushCredential(id=new_id(), organization_id="acme", provider=Provider.apns, fingerprint="-",
                         kind=CredentialKind.apns_certificate, secret=bundle, topic="t")  # fmt: skip

    credential = credential_from_row(row)  # [A-SEND] the topic is the certificate's, whatever the row says

    assert credential.topic == TOPIC  # type: ignore[union-attr]
    assert credential.not_after == client.certificate.not_valid_after_utc  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kind", "secret", "fields", "message"),
    [
        # [A-MDMPUSH] MDM pushes are certificate-only: a stored .p8 key is refused with the fix.
        (
            CredentialKind.apns_token,
            "not a key",
            {"key_id": KEY_ID, "team_id": TEAM_ID, "topic": TOPIC},
            "MDM push certificate",
        ),
        (CredentialKind.apns_token, "irrelevant", {"key_id": KEY_ID}, "token-based pushes"),
        (
            CredentialKind.apns_certificate,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
            {},
            "PEM bundle",
        ),
        (CredentialKind.fcm_service_account, "{not json", {}, "not JSON"),
    ],
)
def test_unusable_material_is_a_clear_error_that_names_no_secret(
    kind: CredentialKind, secret: str, fields: dict[str, Any], message: str
) -> None:
    provider = Provider.fcm if kind is CredentialKind.fcm_service_account else Provider.apns
    row = PushCredential(id=new_id(), organization_id="acme", provider=provider, fingerprint="-",
                         kind=kind, secret=secret, **fields)  # fmt: skip

    with pytest.raises(InvalidCredential, match=message) as raised:
        credential_from_row(row)

    assert secret not in str(raised.value)


def test_a_stored_token_key_holds_its_organizations_apple_deployments_with_the_reason(
    pg: Engine, make_deployments: MakeDeployments
) -> None:
    """[A-MDMPUSH] a .p8 row stored before MDM became certificate-only: nothing is sent, the organization's
    Apple deployments are held with the fix, and no token is touched."""
    queued = make_deployments(pg, Kind.profile, count=3, organization_id="acme")
    _store(pg, Provider.apns, CredentialKind.apns_token, private_pem(ec.generate_private_key(ec.SECP256R1())),
           key_id=KEY_ID, team_id=TEAM_ID, topic=TOPIC)  # fmt: skip
    gateway = PushGateway(ProviderEndpoints(apns_production="https://127.0.0.1:9"))  # never reached
    try:
        dispatch_chunk(sessions(pg), gateway, queued, policy=RetryPolicy.defaults())
    finally:
        gateway.close()

    with Session(pg) as session:
        deployments = list(session.exec(select(Deployment)))
        devices = list(session.exec(select(Device)))
    assert [(d.status, d.hold_reason) for d in deployments] == [
        (Status.queued, f"APNs credential refused: {MDM_NEEDS_CERTIFICATE}")
    ] * 3
    assert {d.token_state for d in devices} == {TokenState.valid}
