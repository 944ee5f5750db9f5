"""Builds push providers from credentials, shares them by fingerprint, swaps them when credentials change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from workers.providers.aosp import AospProvider
from workers.providers.apns import ApnsProvider
from workers.providers.base import PushProvider
from workers.providers.credentials import (
    AospApiKey,
    ApnsCertificate,
    ApnsTokenKey,
    Credential,
    FcmServiceAccount,
    InvalidCredential,
)
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.fcm import FcmProvider

logger = logging.getLogger(__name__)

# [A-MDMPUSH] "The certificate-based process is the only way to send MDM push notifications."
MDM_NEEDS_CERTIFICATE = (
    "an APNs auth key (.p8) cannot send MDM pushes: MDM needs the organization's APNs MDM push certificate "
    "(from identity.apple.com)"
)
ProviderBuilder = Callable[[Credential, ProviderEndpoints], PushProvider]


def build_provider(credential: Credential, endpoints: ProviderEndpoints) -> PushProvider:
    """The provider for a kind of credential. Builds only: no connection is opened before the first send.

    An APNs auth key (.p8) is refused: MDM pushes have no token-based authentication [A-MDMPUSH].
    """
    if isinstance(credential, ApnsTokenKey):
        raise InvalidCredential(MDM_NEEDS_CERTIFICATE)
    if isinstance(credential, ApnsCertificate):
        return ApnsProvider(credential, endpoints)
    if isinstance(credential, FcmServiceAccount):
        return FcmProvider(credential, endpoints)
    return AospProvider(credential, endpoints)


def provider_kind(credential: Credential) -> str:
    if isinstance(credential, ApnsTokenKey | ApnsCertificate):
        return "apns"
    if isinstance(credential, FcmServiceAccount):
        return "fcm"
    assert isinstance(credential, AospApiKey)
    return "aosp"


class ProviderFactory:
    """One provider per credential fingerprint, looked up by organization and provider kind.

    When an organization's credential for a provider changes (renewed certificate, rotated key), the next
    lookup builds the new provider and closes the old one once no organization uses it — after the pushes
    it has in flight are answered. A running worker thus uses a renewed credential without a restart.
    """

    def __init__(self, endpoints: ProviderEndpoints, *, builder: ProviderBuilder = build_provider) -> None:
        self._endpoints = endpoints
        self._builder = builder
        self._by_fingerprint: dict[str, PushProvider] = {}
        self._fingerprint_of: dict[tuple[str, str], str] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def provider_for(self, organization_id: str, credential: Credential) -> PushProvider:
        """The provider for this organization's current credential of its kind."""
        key = (organization_id, provider_kind(credential))
        fingerprint = credential.fingerprint
        provider = self._by_fingerprint.get(fingerprint)
        if provider is None:
            provider = self._builder(credential, self._endpoints)
            self._by_fingerprint[fingerprint] = provider
        previous = self._fingerprint_of.get(key)
        self._fingerprint_of[key] = fingerprint
        if previous is not None and previous != fingerprint:
            logger.info("push credential changed for organization %s (%s): provider replaced", *key)
            self._retire_if_unused(previous)
        return provider

    def forget(self, organization_id: str, kind: str) -> None:
        """The organization has no credential of this kind any more (revoked, deleted)."""
        previous = self._fingerprint_of.pop((organization_id, kind), None)
        if previous is not None:
            self._retire_if_unused(previous)

    async def close(self) -> None:
        providers, self._by_fingerprint = list(self._by_fingerprint.values()), {}
        self._fingerprint_of.clear()
        await asyncio.gather(*(provider.close() for provider in providers), *self._closing)

    def _retire_if_unused(self, fingerprint: str) -> None:
        if fingerprint in self._fingerprint_of.values():
            return
        provider = self._by_fingerprint.pop(fingerprint, None)
        if provider is None:
            return
        task = asyncio.get_running_loop().create_task(provider.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
