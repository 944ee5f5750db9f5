"""How the APNs emulator decides who is pushing: ES256 provider tokens (JWT) or TLS client certificates."""

from __future__ import annotations

from dataclasses import dataclass

import jwt
from cryptography import x509
from cryptography.x509.oid import NameOID

from sandbox.http2 import ConnectionInfo
from sandbox.registry import ApnsCertificate, ApnsKey, DeviceRegistry, certificate_fingerprint

PROVIDER_TOKEN_TTL_S = 3600  # APNs rejects tokens issued more than an hour ago
TOKEN_UPDATE_INTERVAL_S = 20 * 60  # ...and connections that change their token more often than this
CLOCK_SKEW_S = 300
_CACHE_LIMIT = 4096


class ApnsRejected(Exception):
    """APNs refuses the request; the argument is Apple's reason string (never a token or key)."""

    def __init__(self, reason: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s  # only injected faults set it: real APNs sends no Retry-After


@dataclass(frozen=True, slots=True)
class Pusher:
    """Who is pushing: the topics they may use (None: any), the topic when none was given, and for a
    client certificate its subject's UID (None for a provider token), the only topic of an MDM push."""

    topics: frozenset[str] | None
    default_topic: str | None = None
    certificate_uid: str | None = None


@dataclass(frozen=True, slots=True)
class _VerifiedToken:
    key_id: str
    key: ApnsKey | None  # None: an unknown key trusted unverified (open registration)
    issued_at: int


@dataclass(slots=True)
class _ConnectionTokens:
    """What APNs remembers per connection about provider tokens."""

    first_key_id: str
    current: str
    changed_at: float | None = None


class ApnsAuthenticator:
    def __init__(self, registry: DeviceRegistry, environment: str) -> None:
        self.registry = registry
        self.environment = environment
        # Signature checks are the costly part; a connection reuses one token for up to an hour. Keyed by the
        # exact token, so a changed token (another key, team or iat) is verified anew; revocation, the key's
        # environment and the token's age are checked on every request, cached or not.
        self._verified: dict[str, _VerifiedToken] = {}

    def authenticate(self, authorization: str | None, connection: ConnectionInfo) -> Pusher:
        if authorization is not None:
            return self._by_token(authorization, connection)
        if connection.peer_certificate is not None:
            return self._by_certificate(connection.peer_certificate)
        raise ApnsRejected("MissingProviderToken")

    # -- provider tokens -------------------------------------------------------------------------

    def _by_token(self, authorization: str, connection: ConnectionInfo) -> Pusher:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApnsRejected("InvalidProviderToken")
        verified = self._verify(token)
        key = verified.key
        if verified.key_id in self.registry.credentials.revoked_apns_keys:
            raise ApnsRejected("InvalidProviderToken")
        if key is not None and self.environment not in key.environments:
            raise ApnsRejected("BadEnvironmentKeyIdInToken")
        self._track_connection(token, verified.key_id, connection)
        if self.registry.clock() - verified.issued_at > PROVIDER_TOKEN_TTL_S:
            raise ApnsRejected("ExpiredProviderToken")
        return Pusher(key.topics if key is not None else None)

    def _verify(self, token: str) -> _VerifiedToken:
        cached = self._verified.get(token)
        if cached is not None and self.registry.credentials.apns_keys.get(cached.key_id) is cached.key:
            return cached
        verified = self._verify_signature(token)
        self._remember(token, verified)
        return verified

    def _remember(self, token: str, verified: _VerifiedToken) -> None:
        if len(self._verified) >= _CACHE_LIMIT:
            # Expired tokens only ever earn ExpiredProviderToken, which needs no signature check either,
            # but they are the first to go; when every entry is live, start over.
            oldest_live = self.registry.clock() - PROVIDER_TOKEN_TTL_S
            live = {t: v for t, v in self._verified.items() if v.issued_at >= oldest_live}
            self._verified = live if len(live) < _CACHE_LIMIT else {}
        self._verified[token] = verified

    def _verify_signature(self, token: str) -> _VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise ApnsRejected("InvalidProviderToken") from None
        key_id = str(header.get("kid", ""))
        key = self.registry.credentials.apns_keys.get(key_id)
        trusted_unverified = key is None and self.registry.open_registration and bool(key_id)
        if (key is None and not trusted_unverified) or header.get("alg") != "ES256":
            raise ApnsRejected("InvalidProviderToken")
        claims = _decode(token, key)
        issued_at = claims.get("iat")
        wrong_team = key is not None and claims.get("iss") != key.team_id
        if wrong_team or not isinstance(issued_at, int) or issued_at > self.registry.clock() + CLOCK_SKEW_S:
            raise ApnsRejected("InvalidProviderToken")
        return _VerifiedToken(key_id, key, issued_at)

    def _track_connection(self, token: str, key_id: str, connection: ConnectionInfo) -> None:
        state = connection.app_state.get("apns_tokens")
        if not isinstance(state, _ConnectionTokens):
            connection.app_state["apns_tokens"] = _ConnectionTokens(first_key_id=key_id, current=token)
            return
        if key_id != state.first_key_id:
            raise ApnsRejected("UnrelatedKeyIdInToken")
        if token == state.current:
            return
        now = self.registry.clock()
        if state.changed_at is not None and now - state.changed_at < TOKEN_UPDATE_INTERVAL_S:
            raise ApnsRejected("TooManyProviderTokenUpdates")
        state.current, state.changed_at = token, now

    # -- client certificates ---------------------------------------------------------------------

    def _by_certificate(self, der: bytes) -> Pusher:
        fingerprint = certificate_fingerprint(der)
        credentials = self.registry.credentials
        registered = credentials.apns_certificates.get(fingerprint)
        if registered is None and self.registry.open_registration:
            registered = self._adopt(der, fingerprint)
        if registered is None or fingerprint in credentials.revoked_apns_certificates:
            raise ApnsRejected("BadCertificate")  # [A-RESP] 403
        if self.environment not in registered.environments:
            raise ApnsRejected("BadCertificateEnvironment")  # [A-RESP] 403
        only = next(iter(registered.topics)) if len(registered.topics) == 1 else None
        return Pusher(registered.topics, default_topic=only, certificate_uid=registered.uid)

    def _adopt(self, der: bytes, fingerprint: str) -> ApnsCertificate | None:
        """Open registration: a certificate the TLS handshake verified against a registered client CA is
        known from now on, for both environments and its subject's UID as its one topic."""
        certificate = x509.load_der_x509_certificate(der)
        uids = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
        if not uids:
            return None
        self.registry.add_apns_client_certificate(certificate, topics=[str(uids[0].value)])
        return self.registry.credentials.apns_certificates.get(fingerprint)


def _decode(token: str, key: ApnsKey | None) -> dict[str, object]:
    try:
        if key is None:
            claims: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
        else:
            claims = jwt.decode(
                token,
                key.public_key,
                algorithms=["ES256"],
                options={"verify_iat": False, "verify_exp": False, "verify_nbf": False},
            )
    except jwt.PyJWTError:
        raise ApnsRejected("InvalidProviderToken") from None
    return claims
