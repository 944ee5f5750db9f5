"""The emulators' shared world: devices, tokens, presence, pending pushes and registered credentials."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

Clock = Callable[[], float]


class Provider(StrEnum):
    apns = "apns"
    fcm = "fcm"
    aosp = "aosp"


class TokenState(StrEnum):
    valid = "valid"
    unregistered = "unregistered"  # APNs 410 Unregistered, FCM 404 UNREGISTERED, AOSP failed
    expired = "expired"  # APNs 410 ExpiredToken


@dataclass(slots=True)
class Device:
    """One app instance on one device, as the push service knows it."""

    token: str = field(repr=False)
    provider: Provider
    topic: str | None = None  # APNs topic the token was issued for
    environment: str | None = None  # APNs environment the token was issued in: "production" or "development"
    project_id: str | None = None  # FCM project the token belongs to
    online: bool = True
    state: TokenState = TokenState.valid
    state_changed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A push that reached a device. Subscribers receive these; `token` never reaches a repr."""

    provider: Provider
    token: str = field(repr=False)
    push_id: str
    payload: Mapping[str, Any] = field(repr=False)
    delivered_at: float


@dataclass(frozen=True, slots=True)
class _PendingPush:
    push_id: str
    payload: Mapping[str, Any]
    expires_at: float


@dataclass(frozen=True, slots=True)
class ApnsKey:
    team_id: str
    key_id: str
    public_key: ec.EllipticCurvePublicKey
    topics: frozenset[str] | None  # None: any topic
    environments: frozenset[str]


@dataclass(frozen=True, slots=True)
class ApnsCertificate:
    fingerprint: str
    topics: frozenset[str]
    environments: frozenset[str]
    uid: str | None = None  # the subject's UID: an MDM push certificate's one topic [A-MDMPUSH]


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    client_email: str
    public_key: rsa.RSAPublicKey | None  # None: trusted unverified (open registration)
    project_id: str | None  # None: any project (open registration)


BOTH_ENVIRONMENTS = frozenset({"development", "production"})


def apns_environment(name: str) -> str:
    """The registry's name of an APNs environment: production, or development (Apple's "sandbox")."""
    environment = "development" if name == "sandbox" else name
    if environment not in BOTH_ENVIRONMENTS:
        raise ValueError("an APNs environment is production or development (sandbox)")
    return environment


def certificate_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


class _Credentials:
    """Registered provider credentials; read on every request, written by tests."""

    def __init__(self) -> None:
        self.apns_keys: dict[str, ApnsKey] = {}
        self.revoked_apns_keys: set[str] = set()
        self.apns_client_cas: list[x509.Certificate] = []
        self.apns_certificates: dict[str, ApnsCertificate] = {}
        self.revoked_apns_certificates: set[str] = set()
        self.service_accounts: dict[str, ServiceAccount] = {}
        self.aosp_api_keys: set[str] = set()


class DeviceRegistry:
    """Devices and credentials shared by the three emulators.

    Thread-safe: tests change it from their own thread while the emulators read it on their event loop.
    Subscribers are called on the thread that caused the delivery (the emulator's loop, or the caller of
    `come_online`); they must not block. A fleet running its own loop hands deliveries over with
    `loop.call_soon_threadsafe`.
    """

    def __init__(self, *, clock: Clock = time.time, open_registration: bool = False) -> None:
        self.clock = clock
        # Open: unknown devices and AOSP keys are registered on first use and unknown APNs/FCM signing
        # keys are trusted unverified. For a stand-alone sandbox that any client configuration can try.
        self.open_registration = open_registration
        self.credentials = _Credentials()
        self._lock = threading.RLock()
        self._devices: dict[str, Device] = {}
        self._pending_by_token: dict[str, dict[str, _PendingPush]] = {}
        self._pending_by_push: dict[str, set[str]] = {}
        self._subscribers: list[Callable[[Delivery], None]] = []

    # -- devices ---------------------------------------------------------------------------------

    def add_apns_device(
        self, token: str, *, topic: str, environment: str = "production", online: bool = True
    ) -> None:
        """A device token issued for `topic` in `environment` ("production", or "development"/"sandbox").

        APNs tokens work only in their own environment [A-SEND]: the other environment's listener answers
        400 BadDeviceToken [A-RESP]. The default is the environment of `Sandbox.apns_url`.
        """
        self._add(
            Device(
                token=token.lower(),
                provider=Provider.apns,
                topic=topic,
                environment=apns_environment(environment),
                online=online,
            )
        )

    def add_fcm_device(self, token: str, *, project_id: str, online: bool = True) -> None:
        self._add(Device(token=token, provider=Provider.fcm, project_id=project_id, online=online))

    def add_aosp_device(self, token: str, *, online: bool = True) -> None:
        self._add(Device(token=token, provider=Provider.aosp, online=online))

    def _add(self, device: Device) -> None:
        with self._lock:
            self._devices[device.token] = device

    def device(self, token: str) -> Device | None:
        with self._lock:
            return self._devices.get(token)

    def resolve(
        self, token: str, provider: Provider, *, topic: str | None = None, project_id: str | None = None
    ) -> Device | None:
        """The device of `token`; with open registration, a new valid online one when it is unknown."""
        with self._lock:
            device = self._devices.get(token)
            if device is None and self.open_registration:
                device = Device(token=token, provider=provider, topic=topic, project_id=project_id)
                self._devices[token] = device
            return device

    def knows_aosp_api_key(self, api_key: str) -> bool:
        with self._lock:
            if self.open_registration:
                self.credentials.aosp_api_keys.add(api_key)
            return api_key in self.credentials.aosp_api_keys

    def unregister(self, token: str, *, at: float | None = None) -> None:
        """The app was removed: APNs answers 410 Unregistered with `at` (default now) as its timestamp."""
        self._set_state(token, TokenState.unregistered, at)

    def expire_token(self, token: str, *, at: float | None = None) -> None:
        """The token expired (APNs 410 ExpiredToken)."""
        self._set_state(token, TokenState.expired, at)

    def _set_state(self, token: str, state: TokenState, at: float | None) -> None:
        with self._lock:
            device = self._require(token)
            device.state = state
            device.state_changed_at = self.clock() if at is None else at
            self._drop_pending(token)

    def _require(self, token: str) -> Device:
        device = self._devices.get(token) or self._devices.get(token.lower())
        if device is None:
            raise KeyError("no such device registered")  # never the token itself
        return device

    # -- presence and delivery -------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Delivery], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[Delivery], None]) -> None:
        """Stop calling `callback` (e.g. a closed fleet); a callback never subscribed is ignored."""
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def go_offline(self, token: str) -> None:
        with self._lock:
            self._require(token).online = False

    def come_online(self, token: str) -> list[Delivery]:
        """The device connects: it receives what is pending and unexpired, and leaves pending lists."""
        with self._lock:
            device = self._require(token)
            device.online = True
            now = self.clock()
            pending = self._drop_pending(device.token)
            for push in pending:
                if push.expires_at <= now:
                    # Expired before the device came back: it never gets it, and stays listed as pending.
                    self._pending_by_push.setdefault(push.push_id, set()).add(device.token)
            deliveries = [
                Delivery(device.provider, device.token, p.push_id, p.payload, now)
                for p in pending
                if p.expires_at > now
            ]
        self._notify(deliveries)
        return deliveries

    def accept_push(
        self,
        token: str,
        *,
        push_id: str,
        payload: Mapping[str, Any],
        expires_at: float,
        keep_only_latest: bool = False,
    ) -> None:
        """The provider accepted a push: deliver it now if the device is online, else keep it pending.

        `keep_only_latest` is APNs' store-and-forward, which keeps one notification per device and topic.
        """
        with self._lock:
            device = self._require(token)
            now = self.clock()
            if device.online:
                delivery = Delivery(device.provider, device.token, push_id, payload, now)
            else:
                self._keep_pending(device.token, _PendingPush(push_id, payload, expires_at), keep_only_latest)
                return
        self._notify([delivery])

    def pending_devices(self, push_id: str) -> list[str]:
        """Tokens that have not received `push_id` yet (whether or not it has expired)."""
        with self._lock:
            return sorted(self._pending_by_push.get(push_id, ()))

    def _keep_pending(self, token: str, pending: _PendingPush, keep_only_latest: bool) -> None:
        if keep_only_latest:
            self._drop_pending(token)
        self._pending_by_token.setdefault(token, {})[pending.push_id] = pending
        self._pending_by_push.setdefault(pending.push_id, set()).add(token)

    def _drop_pending(self, token: str) -> list[_PendingPush]:
        pending = list(self._pending_by_token.pop(token, {}).values())
        for push in pending:
            self._pending_by_push.get(push.push_id, set()).discard(token)
        return pending

    def _notify(self, deliveries: Iterable[Delivery]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for delivery in deliveries:
            for callback in subscribers:
                callback(delivery)

    # -- credentials -----------------------------------------------------------------------------

    def add_apns_key(
        self,
        *,
        team_id: str,
        key_id: str,
        public_key: ec.EllipticCurvePublicKey | bytes,
        topics: Iterable[str] | None = None,
        environments: Iterable[str] = BOTH_ENVIRONMENTS,
    ) -> None:
        """A token-auth signing key (.p8) of a team; `topics` limits what it may push to (TopicDisallowed)."""
        key = _load_ec_key(public_key)
        entry = ApnsKey(team_id, key_id, key, frozenset(topics) if topics else None, frozenset(environments))
        with self._lock:
            self.credentials.apns_keys[key_id] = entry
            self.credentials.revoked_apns_keys.discard(key_id)

    def revoke_apns_key(self, key_id: str) -> None:
        with self._lock:
            self.credentials.revoked_apns_keys.add(key_id)

    def add_apns_client_ca(self, ca_certificate: x509.Certificate | bytes) -> None:
        """A CA whose client certificates the APNs TLS listener accepts; register it before starting."""
        with self._lock:
            self.credentials.apns_client_cas.append(_load_certificate(ca_certificate))

    def add_apns_client_certificate(
        self,
        certificate: x509.Certificate | bytes,
        *,
        topics: Iterable[str],
        environments: Iterable[str] = BOTH_ENVIRONMENTS,
    ) -> None:
        """A push certificate APNs knows (BadCertificate otherwise), with the topics it may push to.

        Its subject's UID is kept: an MDM push is accepted only to that topic [A-MDMPUSH].
        """
        loaded = _load_certificate(certificate)
        der = loaded.public_bytes(serialization.Encoding.DER)
        uids = loaded.subject.get_attributes_for_oid(NameOID.USER_ID)
        entry = ApnsCertificate(
            certificate_fingerprint(der),
            frozenset(topics),
            frozenset(apns_environment(name) for name in environments),
            str(uids[0].value) if uids else None,
        )
        with self._lock:
            self.credentials.apns_certificates[entry.fingerprint] = entry

    def revoke_apns_client_certificate(self, certificate: x509.Certificate | bytes) -> None:
        der = _load_certificate(certificate).public_bytes(serialization.Encoding.DER)
        with self._lock:
            self.credentials.revoked_apns_certificates.add(certificate_fingerprint(der))

    def add_fcm_service_account(
        self, client_email: str, public_key: rsa.RSAPublicKey | bytes, *, project_id: str
    ) -> None:
        key = _load_rsa_key(public_key)
        with self._lock:
            self.credentials.service_accounts[client_email] = ServiceAccount(client_email, key, project_id)

    def remove_fcm_service_account(self, client_email: str) -> None:
        with self._lock:
            self.credentials.service_accounts.pop(client_email, None)

    def add_aosp_api_key(self, api_key: str) -> None:
        with self._lock:
            self.credentials.aosp_api_keys.add(api_key)

    def revoke_aosp_api_key(self, api_key: str) -> None:
        with self._lock:
            self.credentials.aosp_api_keys.discard(api_key)


def _load_ec_key(key: ec.EllipticCurvePublicKey | bytes) -> ec.EllipticCurvePublicKey:
    loaded = serialization.load_pem_public_key(key) if isinstance(key, bytes) else key
    if not isinstance(loaded, ec.EllipticCurvePublicKey):
        raise TypeError("an APNs signing key is an EC (P-256) key")
    return loaded


def _load_rsa_key(key: rsa.RSAPublicKey | bytes) -> rsa.RSAPublicKey:
    loaded = serialization.load_pem_public_key(key) if isinstance(key, bytes) else key
    if not isinstance(loaded, rsa.RSAPublicKey):
        raise TypeError("a service account key is an RSA key")
    return loaded


def _load_certificate(certificate: x509.Certificate | bytes) -> x509.Certificate:
    if isinstance(certificate, bytes):
        return x509.load_pem_x509_certificate(certificate)
    return certificate
