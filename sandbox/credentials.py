"""Push credentials the emulators know, stored in mdmq as an operator's upload is: a rollout's keys."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from models.database import Session
from models.enums import CredentialKind, Provider, PushEnvironment
from sandbox.fleet import APNS_TOPIC, FCM_PROJECT_ID
from sandbox.registry import DeviceRegistry
from sandbox.tls import Issued, issue_mdm_push_certificate
from workers.services.credentials import store_credential

# The push certificate's life: long enough that the certificate watch never calls it expiring.
PUSH_CERTIFICATE_DAYS = 365
# The APNs environment the credentials are stored for and the fleet's tokens were issued in: Apple's
# sandbox, which the emulators call development (`Sandbox.apns_sandbox_url`).
APNS_ENVIRONMENT = PushEnvironment.sandbox
EMULATED_APNS_ENVIRONMENT = "development"
FCM_EMAIL = f"mdmq-demo@{FCM_PROJECT_ID}.iam.gserviceaccount.com"


@dataclass(frozen=True)
class DemoCredential:
    """A credential as an operator uploads it. Plain strings, so that it crosses a process boundary."""

    kind: CredentialKind
    secret: str = field(repr=False)
    certificate_pem: str | None = None  # an APNs push certificate's public half: what APNs revokes


def register_credentials(
    registry: DeviceRegistry, *, push_ca: Issued | None = None
) -> dict[Provider, DemoCredential]:
    """A credential for each provider, known to the emulators. The APNs push certificate is issued by
    `push_ca`, which the registry must know already, or by a throw-away CA registered here; either way
    before the emulators start, which read their client CAs then."""
    return {provider: new_credential(registry, provider, push_ca) for provider in Provider}


def new_credential(registry: DeviceRegistry, provider: Provider, push_ca: Issued | None) -> DemoCredential:
    """Fresh material for `provider`, known to the emulators from now on. For APNs an MDM push certificate
    for the fleet's topic: MDM pushes are certificate-only, to the topic in the subject's UID
    [A-MDMPUSH], registered for the environment the credentials are stored for."""
    if provider is Provider.apns:
        issued = issue_mdm_push_certificate(
            registry,
            topic=APNS_TOPIC,
            environments=(EMULATED_APNS_ENVIRONMENT,),
            ca=push_ca,
            days=PUSH_CERTIFICATE_DAYS,
        )
        certificate = issued.issued.cert_pem.decode("ascii")
        return DemoCredential(CredentialKind.apns_certificate, issued.pem_bundle, certificate)
    if provider is Provider.fcm:
        fcm = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        registry.add_fcm_service_account(FCM_EMAIL, fcm.public_key(), project_id=FCM_PROJECT_ID)
        account = {
            "type": "service_account",
            "client_email": FCM_EMAIL,
            "private_key": _pem(fcm),
            "project_id": FCM_PROJECT_ID,
            "private_key_id": secrets.token_hex(8),
        }
        return DemoCredential(CredentialKind.fcm_service_account, json.dumps(account))
    aosp = secrets.token_hex(16)
    registry.add_aosp_api_key(aosp)
    return DemoCredential(CredentialKind.aosp_api_key, aosp)


def store_credentials(
    session: Session, organization_id: str, credentials: Mapping[Provider, DemoCredential]
) -> list[str]:
    """Stored as an operator's upload is; returns what was held for the previous ones."""
    released: list[str] = []
    for provider, credential in credentials.items():
        released += store_credential(
            session,
            organization_id=organization_id,
            provider=provider,
            kind=credential.kind,
            secret=credential.secret,
            # An APNs certificate's topic is read from the certificate: none is passed.
            project_id=FCM_PROJECT_ID,
            environment=APNS_ENVIRONMENT,
        ).released
    return released


def _pem(key: rsa.RSAPrivateKey) -> str:
    encoding, private = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, private, serialization.NoEncryption()).decode()
