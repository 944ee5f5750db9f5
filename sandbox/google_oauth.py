"""Google's OAuth 2.0 token endpoint for service accounts (JWT bearer grant), served by the FCM emulator."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs

import jwt

from sandbox.registry import DeviceRegistry, ServiceAccount

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL, not a secret)
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
ACCESS_TOKEN_TTL_S = 3599
MAX_ASSERTION_LIFETIME_S = 3600
CLOCK_SKEW_S = 300

_SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)


class OAuthRejected(Exception):
    """The token endpoint refuses the grant: `error` and `description` as Google words them."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(error)
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class AccessToken:
    account: ServiceAccount
    scopes: frozenset[str]
    expires_at: float

    def allows_fcm(self) -> bool:
        return bool(self.scopes & {FCM_SCOPE, CLOUD_PLATFORM_SCOPE})


class TokenIssuer:
    """Exchanges signed assertions for opaque access tokens and remembers them until they expire."""

    def __init__(self, registry: DeviceRegistry) -> None:
        self.registry = registry
        self._tokens: dict[str, AccessToken] = {}

    def exchange(self, form_body: bytes, own_token_url: str) -> tuple[str, AccessToken]:
        form = parse_qs(form_body.decode("utf-8", "replace"))
        grant_type = form.get("grant_type", [""])[0]
        if grant_type != GRANT_TYPE:
            raise OAuthRejected("unsupported_grant_type", f"Invalid grant_type: {grant_type[:100]}")
        assertion = form.get("assertion", [""])[0]
        account, scopes = self._verify(assertion, {TOKEN_AUDIENCE, own_token_url})
        self._forget_expired()
        token = f"ya29.sandbox-{secrets.token_urlsafe(32)}"
        access = AccessToken(account, scopes, self.registry.clock() + ACCESS_TOKEN_TTL_S)
        self._tokens[token] = access
        return token, access

    def lookup(self, token: str) -> AccessToken | None:
        access = self._tokens.get(token)
        if access is None or access.expires_at <= self.registry.clock():
            return None
        if self.registry.credentials.service_accounts.get(access.account.client_email) is not access.account:
            return None  # the service account (or its key) was removed since
        return access

    def _verify(self, assertion: str, audiences: set[str]) -> tuple[ServiceAccount, frozenset[str]]:
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise OAuthRejected("invalid_grant", "Invalid JWT: Unexpected token format.") from None
        account = self._account(str(unverified.get("iss", "")))
        claims = _check_signature(assertion, account) if account.public_key is not None else unverified
        if claims.get("aud") not in audiences:
            raise OAuthRejected(
                "invalid_grant", f"Invalid JWT: Failed audience check. Expected {TOKEN_AUDIENCE}"
            )
        self._check_times(claims)
        scope = claims.get("scope")
        if not isinstance(scope, str) or not scope.split():
            raise OAuthRejected("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        return account, frozenset(scope.split())

    def _account(self, client_email: str) -> ServiceAccount:
        accounts = self.registry.credentials.service_accounts
        account = accounts.get(client_email)
        if account is None and self.registry.open_registration and client_email:
            account = accounts.setdefault(client_email, ServiceAccount(client_email, None, None))
        if account is None:
            raise OAuthRejected("invalid_grant", "Invalid grant: account not found")
        return account

    def _check_times(self, claims: dict[str, object]) -> None:
        issued_at, expires_at = claims.get("iat"), claims.get("exp")
        if not isinstance(issued_at, int) or not isinstance(expires_at, int):
            raise OAuthRejected("invalid_grant", _SHORT_LIVED)
        now = self.registry.clock()
        too_long = expires_at - issued_at > MAX_ASSERTION_LIFETIME_S
        out_of_time = issued_at > now + CLOCK_SKEW_S or expires_at < now - CLOCK_SKEW_S
        if too_long or out_of_time:
            raise OAuthRejected("invalid_grant", _SHORT_LIVED)

    def _forget_expired(self) -> None:
        now = self.registry.clock()
        for token in [t for t, access in self._tokens.items() if access.expires_at <= now]:
            del self._tokens[token]


def _check_signature(assertion: str, account: ServiceAccount) -> dict[str, object]:
    assert account.public_key is not None
    try:
        claims: dict[str, object] = jwt.decode(
            assertion,
            account.public_key,
            algorithms=["RS256"],
            options={"verify_aud": False, "verify_iat": False, "verify_exp": False, "verify_nbf": False},
        )
    except jwt.PyJWTError:
        raise OAuthRejected("invalid_grant", "Invalid JWT Signature.") from None
    return claims
