"""Small closed vocabularies stored beside deployments: providers, platforms, credential states, actors."""

from __future__ import annotations

from enum import StrEnum


class Provider(StrEnum):
    apns = "apns"
    fcm = "fcm"
    aosp = "aosp"


# How a message to an admin names each provider.
PROVIDER_NAMES = {Provider.apns: "APNs", Provider.fcm: "FCM", Provider.aosp: "The AOSP push provider"}


class Platform(StrEnum):
    ios = "ios"
    macos = "macos"
    android = "android"
    aosp = "aosp"


# The provider that wakes a device of each platform.
PLATFORM_PROVIDER = {
    Platform.ios: Provider.apns,
    Platform.macos: Provider.apns,
    Platform.android: Provider.fcm,
    Platform.aosp: Provider.aosp,
}


class TokenState(StrEnum):
    valid = "valid"
    invalid = "invalid"


class CredentialKind(StrEnum):
    apns_token = "apns_token"  # noqa: S105  (a kind of credential, not one)  .p8 key, key id, team id
    apns_certificate = "apns_certificate"  # PEM or P12 push certificate
    fcm_service_account = "fcm_service_account"
    aosp_api_key = "aosp_api_key"


class CredentialStatus(StrEnum):
    valid = "valid"
    expiring = "expiring"
    expired = "expired"
    revoked = "revoked"
    invalid = "invalid"


class PushEnvironment(StrEnum):
    production = "production"
    sandbox = "sandbox"


class Actor(StrEnum):
    """Who made a transition, as the deployment's history shows it."""

    api = "api"
    worker = "worker"
    scheduler = "scheduler"
    device = "device"
    ops = "ops"


class CertificateSource(StrEnum):
    pem_file = "pem_file"
    tls_endpoint = "tls_endpoint"
