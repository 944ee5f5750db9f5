"""The one small interface every push provider implements, and the closed set of outcomes it reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from config.errors import MdmqError


class Outcome(StrEnum):
    """What a provider's answer means, by whose problem it is; the raw status and reason travel beside it.

    The scope decides what is touched. Getting it wrong either fails what an admin fixes in a minute or,
    worse, invalidates a whole fleet's tokens (DESIGN §4.3; every answer and its source: docs/providers.md).
    """

    accepted = "accepted"
    # The device's: this token is dead for good (APNs 410 Unregistered/ExpiredToken, FCM UNREGISTERED).
    permanent = "permanent"
    # A "dead token" answer that the providers also give for *every* token when the organization's
    # credential has the wrong topic, environment or project (APNs BadDeviceToken, DeviceTokenNotForTopic;
    # FCM SENDER_ID_MISMATCH, INVALID_ARGUMENT about the token; the AOSP provider's failed tokens). The
    # dispatch judges it on the credential's recent answers: the device's, or the organization's.
    dead_token = "dead_token"  # noqa: S105  (an outcome, not a secret)
    # Nobody's: try again later (429, 5xx, connection loss, GOAWAY). `retry_after_s` says when, if known.
    transient = "transient"
    # The credential itself is refused (revoked key, bad certificate, OAuth refused): it is marked invalid
    # and the organization's deployments for the provider are held. Nothing fails, no token is touched.
    credential = "credential"
    # The organization's configuration (topic, environment, project, the APNs key stored in Firebase): hold
    # as for `credential`, but the credential stays valid; `advice` names the fix.
    config = "config"
    # The payload's: the provider refused this content (too large, malformed); sending it again won't help.
    payload_rejected = "payload_rejected"


# Outcomes that hold the organization's deployments for the provider instead of touching a device.
HOLDING = frozenset({Outcome.credential, Outcome.config})


class PushType(StrEnum):
    mdm = "mdm"  # Apple MDM wake-up: {"mdm": push_magic}
    alert = "alert"
    background = "background"
    data = "data"  # FCM/AOSP data message that wakes the agent


@dataclass(frozen=True, slots=True)
class Push:
    """One push to one device. `token` and `push_magic` are secrets: they never reach a log or an error."""

    device_id: str
    token: str = field(repr=False)
    push_type: PushType = PushType.mdm
    push_magic: str | None = field(default=None, repr=False)
    payload: Mapping[str, Any] | None = None
    priority: int = 10
    expiration_s: int = 86_400
    collapse_id: str | None = None


@dataclass(frozen=True, slots=True)
class PushResult:
    """The provider's answer for one device."""

    device_id: str
    outcome: Outcome
    push_id: str | None = None  # apns-id, FCM message name, AOSP push id
    status: int | None = None  # the raw HTTP status
    reason: str | None = None  # the raw provider reason (APNs reason, FCM errorCode, AOSP error)
    retry_after_s: float | None = None
    token_invalid_since: datetime | None = None  # APNs 410 timestamp
    # For an answer that may be the organization's (config, credential, dead_token): what an admin should
    # fix, in words that name no secret, e.g. "upload the renewed certificate, not a new one".
    advice: str | None = None
    sent_at: datetime | None = None
    expires_at: datetime | None = None


class ProviderError(MdmqError):
    """The push provider could not be used."""


class ConnectionFailed(ProviderError):
    """Could not reach the push provider at all; every push of the batch is still to be sent."""


class CredentialRejected(ProviderError):
    """The provider refused the credential before any push was sent (OAuth failure, bad certificate)."""


class PushProvider(Protocol):
    """Sends pushes for one credential over persistent connections.

    `send` returns one `PushResult` per push, in order, for every push it was given: a device's failure is
    data, not an exception. Only a failure of the whole provider raises, and then a `ProviderError`.
    """

    async def send(self, pushes: Sequence[Push]) -> list[PushResult]: ...

    async def close(self) -> None: ...

    @property
    def connection_count(self) -> int:
        """Connections open now, to the push service and to any token endpoint it needs."""
        ...
