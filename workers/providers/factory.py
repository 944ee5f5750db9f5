"""Builds push providers from credentials, shares them by fingerprint, swaps them when credentials change and
closes those left idle."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter, Gauge

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
PROVIDER_KINDS = ("apns", "fcm", "aosp")
# Minutes, not seconds: APNs wants connections kept open across notifications, and treats rapid connection
# and disconnection as a denial-of-service attack [A-SEND].
DEFAULT_IDLE_S = 300.0
# APNs allows several connections per provider for throughput [A-SEND]; each holds up to 200 streams.
DEFAULT_MAX_CONNECTIONS = 4
# Idle providers are looked for (and the connections gauge brought up to date) this often at most: one idle
# for `idle_s` is closed within `idle_s` and `idle_s` + this.
TICK_MAX_S = 5.0

PROVIDERS_ALIVE = Gauge(
    "mdmq_push_providers",
    "Push providers alive in the worker processes, one per credential a process sent with within "
    "MDMQ_PROVIDER_IDLE_S, by provider.",
    ["provider"],
    multiprocess_mode="livesum",
)
CONNECTIONS_OPEN = Gauge(
    "mdmq_push_connections",
    "HTTP/2 connections the worker processes hold open to the push services (and FCM's token endpoint), "
    "by provider.",
    ["provider"],
    multiprocess_mode="livesum",
)
PROVIDERS_EVICTED = Counter(
    "mdmq_push_providers_evicted",
    "Push providers closed after MDMQ_PROVIDER_IDLE_S unused, by provider.",
    ["provider"],
)
for _kind in PROVIDER_KINDS:  # at 0 from the start, so that a worker that sent nothing shows 0, not nothing
    PROVIDERS_ALIVE.labels(_kind)
    CONNECTIONS_OPEN.labels(_kind)
    PROVIDERS_EVICTED.labels(_kind)


class ProviderBuilder(Protocol):
    def __call__(
        self, credential: Credential, endpoints: ProviderEndpoints, *, max_connections: int
    ) -> PushProvider: ...


def build_provider(
    credential: Credential, endpoints: ProviderEndpoints, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> PushProvider:
    """The provider for a kind of credential, opening at most `max_connections` to its push service. Builds
    only: no connection is opened before the first send.

    An APNs auth key (.p8) is refused: MDM pushes have no token-based authentication [A-MDMPUSH].
    """
    if isinstance(credential, ApnsTokenKey):
        raise InvalidCredential(MDM_NEEDS_CERTIFICATE)
    if isinstance(credential, ApnsCertificate):
        return ApnsProvider(credential, endpoints, max_connections=max_connections)
    if isinstance(credential, FcmServiceAccount):
        return FcmProvider(credential, endpoints, max_connections=max_connections)
    return AospProvider(credential, endpoints, max_connections=max_connections)


def provider_kind(credential: Credential) -> str:
    if isinstance(credential, ApnsTokenKey | ApnsCertificate):
        return "apns"
    if isinstance(credential, FcmServiceAccount):
        return "fcm"
    assert isinstance(credential, AospApiKey)
    return "aosp"


@dataclass(slots=True, eq=False)
class _Entry:
    """A provider and what decides when it closes: its pushes in flight and when it was last used."""

    provider: PushProvider
    kind: str
    last_used: float
    in_use: int = 0
    retired: bool = False  # out of the factory: closes when its last use ends
    connections: int = 0  # as last added to the connections gauge


class ProviderFactory:
    """One provider per credential fingerprint, looked up by organization and provider kind.

    When an organization's credential for a provider changes (renewed certificate, rotated key), the next
    lookup builds the new provider and closes the old one once no organization uses it — after the pushes
    it has in flight are answered. A running worker thus uses a renewed credential without a restart.

    A provider unused for `idle_s` is closed the same way and dropped; the next push with its credential
    builds it again. The check runs on the event loop's timer, only while the factory holds a provider.
    """

    def __init__(
        self,
        endpoints: ProviderEndpoints,
        *,
        idle_s: float = DEFAULT_IDLE_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        builder: ProviderBuilder = build_provider,
    ) -> None:
        self._endpoints = endpoints
        self._idle_s = idle_s
        self._tick_s = min(idle_s / 4, TICK_MAX_S)
        self._max_connections = max_connections
        self._builder = builder
        self._entries: dict[str, _Entry] = {}
        self._fingerprint_of: dict[tuple[str, str], str] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._tick: asyncio.TimerHandle | None = None
        self._evicted_since_collection = False
        self._collected_at = time.monotonic()

    def provider_for(self, organization_id: str, credential: Credential) -> PushProvider:
        """The provider for this organization's current credential of its kind."""
        return self._entry_for(organization_id, credential).provider

    @contextmanager
    def using(self, organization_id: str, credential: Credential) -> Iterator[PushProvider]:
        """`provider_for`, kept from being closed (idle, or its credential replaced) until the block ends:
        what is sent in the block is answered on the connections it was sent on."""
        entry = self._entry_for(organization_id, credential)
        entry.in_use += 1
        try:
            yield entry.provider
        finally:
            entry.in_use -= 1
            entry.last_used = time.monotonic()
            if entry.retired and not entry.in_use:
                self._close_later(entry)

    def forget(self, organization_id: str, kind: str) -> None:
        """The organization has no credential of this kind any more (revoked, deleted)."""
        previous = self._fingerprint_of.pop((organization_id, kind), None)
        if previous is not None:
            self._retire_if_unused(previous)

    async def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        entries, self._entries = list(self._entries.values()), {}
        self._fingerprint_of.clear()
        await asyncio.gather(*(self._close(entry) for entry in entries), *self._closing)

    @property
    def provider_count(self) -> int:
        return len(self._entries)

    def _entry_for(self, organization_id: str, credential: Credential) -> _Entry:
        kind = provider_kind(credential)
        fingerprint = credential.fingerprint
        entry = self._entries.get(fingerprint)
        if entry is None:
            provider = self._builder(credential, self._endpoints, max_connections=self._max_connections)
            entry = self._entries[fingerprint] = _Entry(provider, kind, time.monotonic())
            PROVIDERS_ALIVE.labels(kind).inc()
            self._arm()
        else:
            entry.last_used = time.monotonic()
        key = (organization_id, kind)
        previous = self._fingerprint_of.get(key)
        self._fingerprint_of[key] = fingerprint
        if previous is not None and previous != fingerprint:
            logger.info("push credential changed for organization %s (%s): provider replaced", *key)
            self._retire_if_unused(previous)
        return entry

    def _retire_if_unused(self, fingerprint: str) -> None:
        if fingerprint in self._fingerprint_of.values():
            return
        entry = self._entries.pop(fingerprint, None)
        if entry is None:
            return
        entry.retired = True
        if not entry.in_use:
            self._close_later(entry)

    # --- idle providers ------------------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._tick is None:
            self._tick = asyncio.get_running_loop().call_later(self._tick_s, self._evict_idle)

    def _evict_idle(self) -> None:
        self._tick = None
        now = time.monotonic()
        self._collect_evicted(now)
        for fingerprint, entry in list(self._entries.items()):
            if not entry.in_use and now - entry.last_used >= self._idle_s:
                self._evict(fingerprint, entry)
            else:
                _count_connections(entry, entry.provider.connection_count)
        if self._entries or self._evicted_since_collection:
            self._arm()

    def _collect_evicted(self, now: float) -> None:
        """Free the providers evicted since the last collection, once they are closed, at most once per
        idle time. A closed provider is held in reference cycles (its connections' asyncio transports and
        protocols, h2's state), which only a full collection frees, and a busy worker runs one rarely: the
        memory of each wave of idle providers would stay taken while the next wave's was allocated."""
        if not self._evicted_since_collection or self._closing or now - self._collected_at < self._idle_s:
            return
        gc.collect()
        self._evicted_since_collection = False
        self._collected_at = now

    def _evict(self, fingerprint: str, entry: _Entry) -> None:
        del self._entries[fingerprint]
        for key in [key for key, used in self._fingerprint_of.items() if used == fingerprint]:
            del self._fingerprint_of[key]
        logger.debug("%s push provider unused for %g s: closed", entry.kind, self._idle_s)
        PROVIDERS_EVICTED.labels(entry.kind).inc()
        self._evicted_since_collection = True
        entry.retired = True
        self._close_later(entry)

    # --- closing -------------------------------------------------------------------------------------------

    def _close_later(self, entry: _Entry) -> None:
        task = asyncio.get_running_loop().create_task(self._close(entry))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, entry: _Entry) -> None:
        PROVIDERS_ALIVE.labels(entry.kind).dec()
        try:
            await entry.provider.close()
        finally:
            _count_connections(entry, 0)


def _count_connections(entry: _Entry, now_open: int) -> None:
    """Moves the connections gauge by this provider's change since it was last counted: the gauge is the
    sum over every factory of the process (the worker's, and the scheduler's in the embedded mode)."""
    if now_open != entry.connections:
        CONNECTIONS_OPEN.labels(entry.kind).inc(now_open - entry.connections)
        entry.connections = now_open
