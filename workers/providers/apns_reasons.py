"""APNs answers mapped onto mdmq's outcomes, each with the admin's fix where the answer may be theirs.

Every documented reason is listed with its source key (providers.md's Sources): [A-RESP] Apple's "Handling
notification responses from APNs", [A-JWT] "Establishing a token-based connection to APNs", [A-MDMPUSH]
"Setting up push notifications for your device management customers". The raw status and reason always
travel beside the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from workers.providers.base import Outcome


@dataclass(frozen=True, slots=True)
class Answer:
    """What mdmq makes of one APNs reason: the outcome, and for holding or ambiguous ones the fix."""

    outcome: Outcome
    advice: str | None = None


_WRONG_ENVIRONMENT = (
    "the push certificate is for the other APNs environment (production/sandbox) than the devices' tokens: "
    "store it with the devices' environment"
)
_WRONG_TOPIC = (
    "the push certificate's topic does not match the devices' enrollment topic: "
    "upload the renewed certificate (same Apple ID), not a new one"
)
_CERTIFICATE_ENVIRONMENT = (
    "APNs says the push certificate is for the other environment: store it as production or sandbox "
    "to match the certificate"
)
_TOPIC_DISALLOWED = (
    "APNs does not allow this certificate to push to the devices' topic: upload the organization's MDM "
    "push certificate (topic com.apple.mgmt.…)"
)
_BAD_TOPIC = (
    "APNs refuses the push topic: it must be the MDM push certificate's subject UID "
    "(com.apple.mgmt.…); upload that certificate"
)
_MISSING_TOPIC = (
    "APNs needs a topic for this certificate (it has several): upload the organization's MDM push "
    "certificate, whose subject UID is its one topic"
)
_KEY_ENVIRONMENT = (
    "the signing key is for the other APNs environment; MDM pushes need the organization's MDM push "
    "certificate: upload it"
)
_BAD_CERTIFICATE = (
    "APNs refuses the push certificate (invalid or revoked): renew it at identity.apple.com with the same "
    "Apple ID and upload it"
)
_FORBIDDEN = (
    "APNs forbids this push with this certificate: check the MDM push certificate at identity.apple.com"
)
_CERTIFICATE_NEEDED = (
    "MDM pushes need the organization's MDM push certificate; APNs refused the provider token"
)

_ANSWERS: dict[str, Answer] = {
    # The device's, for sure: the token is no longer valid for the topic; the 410 carries since when.
    "Unregistered": Answer(Outcome.permanent),  # [A-RESP] 410
    "ExpiredToken": Answer(Outcome.permanent),  # [A-RESP] 410
    # Ambiguous: one token's death, or the credential's, when every token says it (the dispatch judges).
    "BadDeviceToken": Answer(
        Outcome.dead_token, _WRONG_ENVIRONMENT
    ),  # [A-RESP] invalid, or other environment
    "DeviceTokenNotForTopic": Answer(Outcome.dead_token, _WRONG_TOPIC),  # [A-RESP] token not for the topic
    # What we built: fail that push, sending it again would not help.
    "MissingDeviceToken": Answer(Outcome.payload_rejected),  # [A-RESP] 400, no token in :path
    "BadCollapseId": Answer(Outcome.payload_rejected),  # [A-RESP] 400
    "BadExpirationDate": Answer(Outcome.payload_rejected),  # [A-RESP] 400
    "BadMessageId": Answer(Outcome.payload_rejected),  # [A-RESP] 400
    "BadPriority": Answer(Outcome.payload_rejected),  # [A-RESP] 400
    "DuplicateHeaders": Answer(Outcome.payload_rejected),  # [A-RESP] 400
    "InvalidPushType": Answer(Outcome.payload_rejected),  # [A-RESP] 400
    "PayloadEmpty": Answer(Outcome.payload_rejected),  # [A-RESP] 400
    "PayloadTooLarge": Answer(Outcome.payload_rejected),  # [A-RESP] [A-SEND] 413
    "BadPath": Answer(Outcome.payload_rejected),  # [A-RESP] 404
    "MethodNotAllowed": Answer(Outcome.payload_rejected),  # [A-RESP] 405
    # The organization's configuration: hold its pushes, the credential stays valid.
    "BadTopic": Answer(Outcome.config, _BAD_TOPIC),  # [A-RESP] 400
    "MissingTopic": Answer(Outcome.config, _MISSING_TOPIC),  # [A-RESP] 400, certificate of several topics
    "TopicDisallowed": Answer(Outcome.config, _TOPIC_DISALLOWED),  # [A-RESP] 400
    "BadCertificateEnvironment": Answer(Outcome.config, _CERTIFICATE_ENVIRONMENT),  # [A-RESP] 403
    "BadEnvironmentKeyIdInToken": Answer(Outcome.config, _KEY_ENVIRONMENT),  # [A-RESP] [A-JWT] 403
    # 3p: APNs has been seen to send this spelling of the reason above.
    "BadEnvironmentKeyInToken": Answer(Outcome.config, _KEY_ENVIRONMENT),
    # The credential itself: marked invalid, the organization held until another is stored.
    "BadCertificate": Answer(Outcome.credential, _BAD_CERTIFICATE),  # [A-RESP] 403
    "Forbidden": Answer(Outcome.credential, _FORBIDDEN),  # [A-RESP] 403
    # MDM has no token auth [A-MDMPUSH]: these can only come from a provider token mdmq does not send.
    "InvalidProviderToken": Answer(Outcome.credential, _CERTIFICATE_NEEDED),  # [A-RESP] [A-JWT] 403
    "MissingProviderToken": Answer(Outcome.credential, _CERTIFICATE_NEEDED),  # [A-RESP] 403, no certificate
    # Later, and maybe on another connection.
    "TooManyRequests": Answer(Outcome.transient),  # [A-RESP] 429, too many pushes to this one device
    "IdleTimeout": Answer(Outcome.transient),  # [A-RESP] 400, reconnect
    "InternalServerError": Answer(Outcome.transient),  # [A-RESP] 500, retry after a delay with backoff
    "ServiceUnavailable": Answer(Outcome.transient),  # [A-RESP] 503
    "Shutdown": Answer(Outcome.transient),  # [A-RESP] 503, the server is closing the connection
    "TooManyProviderTokenUpdates": Answer(Outcome.transient),  # [A-RESP] [A-JWT] 429
    "UnrelatedKeyIdInToken": Answer(Outcome.transient),  # [A-RESP] [A-JWT] 403, open a new connection
    "ExpiredProviderToken": Answer(Outcome.transient),  # [A-JWT] 403, re-sign: never the key's fault
}
# The provider's documented words, for the metrics' reason label, and the outcome each means.
KNOWN_REASONS = frozenset(_ANSWERS)
DOCUMENTED_OUTCOMES: dict[str, Outcome] = {reason: answer.outcome for reason, answer in _ANSWERS.items()}


def answer_for(status: int, reason: str | None) -> Answer:
    """The outcome of an APNs answer; unknown reasons never touch a device (no permanent, no dead_token)."""
    if status == 200:
        return Answer(Outcome.accepted)
    known = _ANSWERS.get(reason or "")
    if known is not None:
        return known
    if status == 403:
        return Answer(Outcome.credential, _FORBIDDEN)
    if status == 429 or status >= 500:
        return Answer(Outcome.transient)
    # An unknown 4xx (410 included): something in what we sent; the device keeps its token.
    return Answer(Outcome.payload_rejected)


def outcome_for(status: int, reason: str | None) -> Outcome:
    return answer_for(status, reason).outcome


def invalid_since(timestamp_ms: object) -> datetime | None:
    """APNs 410 bodies carry, in milliseconds, when the token stopped being valid for the topic."""
    if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int | float):
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
