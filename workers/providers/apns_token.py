"""APNs provider tokens: ES256 JWTs reused for most of their hour and refreshed no faster than APNs allows."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives import serialization

from workers.providers.credentials import ApnsTokenKey

logger = logging.getLogger(__name__)

# APNs rejects a token older than an hour (ExpiredProviderToken) and one replaced within 20 minutes of the
# last (TooManyProviderTokenUpdates). A token is reused for 40 minutes, in the middle of that window.
REUSE_S = 40 * 60
MIN_REFRESH_INTERVAL_S = 20 * 60


@dataclass(frozen=True, slots=True)
class ProviderToken:
    """One signed JWT; `generation` tells whether a rejection concerns the token now in use."""

    generation: int
    issued_at: float
    authorization: bytes = field(repr=False)  # b"bearer <jwt>": a secret


class ApnsTokenSigner:
    """Mints the provider token for one key; one token serves every connection and request of the process."""

    def __init__(self, credential: ApnsTokenKey, *, clock: Callable[[], float] = time.time) -> None:
        self._key = serialization.load_pem_private_key(credential.private_key_pem.encode(), password=None)
        self._key_id = credential.key_id
        self._team_id = credential.team_id
        self._clock = clock
        self._token: ProviderToken | None = None
        self._refusal_logged_for = 0

    @property
    def generation(self) -> int:
        return self._token.generation if self._token else 0

    def current(self) -> ProviderToken:
        token = self._token
        if token is None or self._clock() - token.issued_at >= REUSE_S:
            token = self._mint()
        return token

    def refresh_rejected(self, rejected: ProviderToken) -> ProviderToken | None:
        """A fresh token after APNs called `rejected` expired, or None if APNs would refuse a refresh now.

        Many requests signed with the same token are rejected together; only the first mints a new one and
        the rest reuse it, so APNs sees one update.
        """
        token = self.current()
        if token.generation != rejected.generation:
            return token
        if self._clock() - token.issued_at < MIN_REFRESH_INTERVAL_S:
            if self._refusal_logged_for != token.generation:
                self._refusal_logged_for = token.generation
                logger.warning(
                    "APNs calls provider token %d of key %s expired after %.0f s, too soon to replace it "
                    "(TooManyProviderTokenUpdates): is this host's clock right?",
                    token.generation,
                    self._key_id,
                    self._clock() - token.issued_at,
                )
            return None
        return self._mint()

    def _mint(self) -> ProviderToken:
        issued_at = int(self._clock())
        signed = jwt.encode(
            {"iss": self._team_id, "iat": issued_at},
            self._key,  # type: ignore[arg-type]
            algorithm="ES256",
            headers={"kid": self._key_id},
        )
        generation = self._token.generation + 1 if self._token else 1
        self._token = ProviderToken(generation, float(issued_at), b"bearer " + signed.encode())
        return self._token
