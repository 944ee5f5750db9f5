"""The one small interface every push provider implements, and the closed set of outcomes it reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol


class Outcome(StrEnum):
    """What a provider's answer means for one device; the raw status and reason travel beside it."""

    accepted = "accepted"
    # The token is dead or not ours (APNs BadDeviceToken, Unregistered; FCM UNREGISTERED...).
    permanent = "permanent"
    # Try again later: 429, 5xx, connection loss, GOAWAY. `retry_after_s` says when, if the provider did.
    transient = "transient"
    # The credential is bad or expired: hold the organization's deployments, fail nothing.
    credential = "credential"
    # The provider refused this content (too large, malformed); sending it again would not help.
    payload_rejected = "payload_rejected"


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
    sent_at: datetime | None = None
    expires_at: datetime | None = None


class ProviderError(Exception):
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
