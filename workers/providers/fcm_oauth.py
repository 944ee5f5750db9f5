"""Google OAuth 2.0 for a service account: an RS256-signed assertion exchanged for a cached access token."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn
from urllib.parse import urlencode, urlsplit

import jwt

from workers.providers.base import ConnectionFailed, CredentialRejected, ProviderError
from workers.providers.credentials import FCM_SCOPE, FcmServiceAccount
from workers.providers.http2 import Http2Pool, Response, StreamUnanswered
from workers.providers.timing import count_clock_skew_refusal

logger = logging.getLogger(__name__)

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_S = 3600  # Google's maximum
# A token is replaced this long before Google says it expires, so no request carries one that dies in flight.
REFRESH_MARGIN_S = 300
# Google's words when it refuses an assertion for its iat/exp: this host's clock, not the account.
_CLOCK_WORDS = ("reasonable timeframe", "iat and exp")


class ClockSkewRefused(ProviderError):
    """Google refused the OAuth assertion for its times: this host's clock is off. The service account is
    fine; the batch is retried later, and the refusal is counted for the clock-skew alert."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    authorization: bytes = field(repr=False)  # b"Bearer <token>": a secret
    expires_at: float


class AccessTokenSource:
    """Hands out the service account's access token, fetching a new one only when the cached one runs out.

    Concurrent callers share one fetch: a rollout of thousands of pushes makes one token request.
    """

    def __init__(
        self,
        account: FcmServiceAccount,
        pool: Http2Pool,
        token_path: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._account = account
        self._pool = pool
        self._token_path = token_path.encode()
        self._clock = clock
        self._token: AccessToken | None = None
        self._fetching: asyncio.Future[AccessToken] | None = None
        self.fetch_count = 0

    async def current(self) -> AccessToken:
        token = self._token
        if token is not None and self._clock() < token.expires_at - REFRESH_MARGIN_S:
            return token
        return await self._shared_fetch()

    def forget(self, rejected: AccessToken) -> None:
        """FCM refused `rejected` (revoked early): the next caller fetches a new one."""
        if self._token is rejected:
            self._token = None

    async def _shared_fetch(self) -> AccessToken:
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fetch())
            self._fetching.add_done_callback(self._fetch_done)
        return await asyncio.shield(self._fetching)

    def _fetch_done(self, fetching: asyncio.Future[AccessToken]) -> None:
        self._fetching = None
        if not fetching.cancelled() and fetching.exception() is None:
            self._token = fetching.result()

    async def _fetch(self) -> AccessToken:
        self.fetch_count += 1
        now = self._clock()
        body = urlencode({"grant_type": GRANT_TYPE, "assertion": self._assertion(now)}).encode()
        headers = self._pool.request_headers(b"POST", self._token_path)
        headers.append((b"content-type", b"application/x-www-form-urlencoded"))
        try:
            response = await self._pool.request(headers, body)
        except StreamUnanswered:
            raise ConnectionFailed("the OAuth token endpoint closed the connection") from None
        answer = response.json_object()
        if answer is None:  # not Google's answer: something in front of it spoke, or it was cut short
            raise ConnectionFailed(f"the OAuth token endpoint's {response.unreadable()}")
        self._raise_refusal(response, answer, now)
        access_token, expires_in = answer.get("access_token"), answer.get("expires_in", 3600)
        if response.status != 200 or not isinstance(access_token, str):
            # A 429, a 5xx, or an answer without the token or a refusal: nothing said about the account.
            raise ConnectionFailed(f"the OAuth token endpoint answered {response.status} without a token")
        logger.debug("OAuth access token fetched for %s", self._account.client_email)
        lifetime_s = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
        return AccessToken(b"Bearer " + access_token.encode(), now + lifetime_s)

    def _raise_refusal(self, response: Response, answer: dict[str, Any], now: float) -> None:
        """Google's own refusal ({"error": "invalid_grant", ...}): a skewed clock, or the account."""
        error = answer.get("error")
        if not (400 <= response.status < 500 and response.status != 429 and isinstance(error, str)):
            return
        description = str(answer.get("error_description", ""))
        if error == "invalid_grant" and any(words in description for words in _CLOCK_WORDS):
            self._clock_skew_refused(response, now)
        raise CredentialRejected(
            f"Google refused the service account {self._account.client_email}: {error[:100]}"
        )

    def _clock_skew_refused(self, response: Response, now: float) -> NoReturn:
        host = socket.gethostname()
        count_clock_skew_refusal("fcm", host)
        skew_s = _skew_s(response, now)
        measured = (
            f"this host's clock is {skew_s:+.0f} s off Google's" if skew_s is not None else "unmeasured"
        )
        logger.warning(
            "Google refused the OAuth assertion of %s for its iat/exp: clock skew on host %s (%s)",
            self._account.client_email,
            host,
            measured,
        )
        raise ClockSkewRefused(f"Google refused the OAuth assertion for its times: check the clock of {host}")

    def _assertion(self, now: float) -> str:
        issued_at = int(now)
        headers = {"kid": self._account.private_key_id} if self._account.private_key_id else None
        return jwt.encode(
            {
                "iss": self._account.client_email,
                "scope": FCM_SCOPE,
                "aud": self._account.token_uri,
                "iat": issued_at,
                "exp": issued_at + ASSERTION_LIFETIME_S,
            },
            self._account.signing_key,
            algorithm="RS256",
            headers=headers,
        )


def _skew_s(response: Response, now: float) -> float | None:
    """This host's clock minus the answer's `Date` (Google dates every answer, to the second); None
    without a readable one."""
    date = response.header(b"date")
    if date is None:
        return None
    try:
        return now - parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None


def token_path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path or "/"
