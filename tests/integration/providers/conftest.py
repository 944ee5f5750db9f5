"""Credentials and devices for the provider tests: real clients, real sockets, the sandbox emulators."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sandbox import DeviceRegistry, Sandbox
from sandbox.tls import MdmPushCertificate, issue_mdm_push_certificate
from workers.providers.credentials import (
    AospApiKey,
    ApnsCertificate,
    ApnsEnvironment,
    ApnsTokenKey,
    FcmServiceAccount,
)
from workers.providers.endpoints import ProviderEndpoints

TOPIC = "com.apple.mgmt.External.0f1e2d3c"
TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
PROJECT = "mdmq-test"
CLIENT_EMAIL = "push@mdmq-test.iam.gserviceaccount.com"


def private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def apns_token() -> str:
    return secrets.token_hex(32)


@dataclass
class Clock:
    """A settable unix clock, passed to the client or to the emulators' registry."""

    now: float

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def apns_signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def fcm_signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def apns_key(apns_signing_key: ec.EllipticCurvePrivateKey) -> ApnsTokenKey:
    """An APNs auth key (.p8): mdmq refuses it for MDM, which is certificate-only [A-MDMPUSH]."""
    return ApnsTokenKey(private_pem(apns_signing_key), KEY_ID, TEAM_ID, TOPIC, ApnsEnvironment.sandbox)


@pytest.fixture
def push_certificate(registry: DeviceRegistry) -> MdmPushCertificate:
    """The organization's MDM push certificate (subject UID = TOPIC), known to APNs in both environments.
    Registered with `registry` before any sandbox starts, so its CA is trusted by the TLS listeners."""
    return issue_mdm_push_certificate(registry, topic=TOPIC)


@pytest.fixture
def apns_cert(push_certificate: MdmPushCertificate) -> ApnsCertificate:
    """`push_certificate` as mdmq stores it, for production (the devices' default environment)."""
    return apns_credential(push_certificate)


def apns_credential(
    certificate: MdmPushCertificate, environment: ApnsEnvironment = ApnsEnvironment.production
) -> ApnsCertificate:
    cert_pem, key_pem = certificate.issued.cert_pem.decode(), certificate.issued.key_pem.decode()
    return ApnsCertificate.from_pem(cert_pem, key_pem, environment=environment)


def apns_endpoints(sandbox: Sandbox) -> ProviderEndpoints:
    """Both APNs environments of a TLS sandbox, as MDMQ_APNS_URL and MDMQ_APNS_SANDBOX_URL name them."""
    assert sandbox.tls is not None, "APNs certificates need TLS"
    return ProviderEndpoints(
        apns_production=sandbox.apns_url,
        apns_sandbox=sandbox.apns_sandbox_url,
        ca_pem=sandbox.tls.ca_pem.decode(),
    )


@pytest.fixture
def fcm_account(fcm_signing_key: rsa.RSAPrivateKey) -> FcmServiceAccount:
    return FcmServiceAccount(CLIENT_EMAIL, private_pem(fcm_signing_key), PROJECT, private_key_id="kid-1")


@pytest.fixture
def aosp_key() -> AospApiKey:
    return AospApiKey(secrets.token_hex(16))


@pytest.fixture
def registry(
    apns_signing_key: ec.EllipticCurvePrivateKey, fcm_signing_key: rsa.RSAPrivateKey, aosp_key: AospApiKey
) -> DeviceRegistry:
    registry = DeviceRegistry()
    registry.add_apns_key(team_id=TEAM_ID, key_id=KEY_ID, public_key=apns_signing_key.public_key())
    registry.add_fcm_service_account(CLIENT_EMAIL, fcm_signing_key.public_key(), project_id=PROJECT)
    registry.add_aosp_api_key(aosp_key.api_key)
    return registry
