"""APNs answers mapped onto mdmq's closed outcome set; the raw status and reason always travel beside it."""

from __future__ import annotations

from datetime import UTC, datetime

from workers.providers.base import Outcome

# From Apple's "Handling notification responses from APNs". Reasons not listed fall back on the status.
_OUTCOME_BY_REASON: dict[str, Outcome] = {
    # The token is dead, malformed, for another environment or for another app.
    "BadDeviceToken": Outcome.permanent,
    "DeviceTokenNotForTopic": Outcome.permanent,
    "MissingDeviceToken": Outcome.permanent,
    "Unregistered": Outcome.permanent,
    "ExpiredToken": Outcome.permanent,
    # The credential: hold the organization's pushes until a valid one is stored.
    "BadCertificate": Outcome.credential,
    "BadCertificateEnvironment": Outcome.credential,
    "ExpiredProviderToken": Outcome.credential,
    "InvalidProviderToken": Outcome.credential,
    "MissingProviderToken": Outcome.credential,
    "UnrelatedKeyIdInToken": Outcome.credential,
    "BadEnvironmentKeyIdInToken": Outcome.credential,
    "Forbidden": Outcome.credential,
    # What we sent cannot be accepted as it is; sending it again would not help.
    "BadCollapseId": Outcome.payload_rejected,
    "BadExpirationDate": Outcome.payload_rejected,
    "BadMessageId": Outcome.payload_rejected,
    "BadPriority": Outcome.payload_rejected,
    "BadTopic": Outcome.payload_rejected,
    "DuplicateHeaders": Outcome.payload_rejected,
    "InvalidPushType": Outcome.payload_rejected,
    "MissingTopic": Outcome.payload_rejected,
    "PayloadEmpty": Outcome.payload_rejected,
    "PayloadTooLarge": Outcome.payload_rejected,
    "TopicDisallowed": Outcome.payload_rejected,
    "BadPath": Outcome.payload_rejected,
    "MethodNotAllowed": Outcome.payload_rejected,
    # Later, and maybe elsewhere.
    "IdleTimeout": Outcome.transient,
    "TooManyRequests": Outcome.transient,
    "TooManyProviderTokenUpdates": Outcome.transient,
    "InternalServerError": Outcome.transient,
    "ServiceUnavailable": Outcome.transient,
    "Shutdown": Outcome.transient,
}
# The provider's documented words, for the metrics' reason label.
KNOWN_REASONS = frozenset(_OUTCOME_BY_REASON)


def outcome_for(status: int, reason: str | None) -> Outcome:
    if status == 200:
        return Outcome.accepted
    known = _OUTCOME_BY_REASON.get(reason or "")
    if known is not None:
        return known
    if status == 403:
        return Outcome.credential
    if status == 410:
        return Outcome.permanent
    if status == 429 or status >= 500:
        return Outcome.transient
    return Outcome.payload_rejected


def invalid_since(timestamp_ms: object) -> datetime | None:
    """APNs 410 bodies carry, in milliseconds, when the token stopped being valid for the topic."""
    if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int | float):
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
