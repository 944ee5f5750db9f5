"""The APNs provider API emulator: `POST /3/device/<token>` with Apple's checks, statuses and reasons."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from sandbox.apns_auth import ApnsAuthenticator, ApnsRejected, Pusher
from sandbox.faults import FaultRuntime
from sandbox.http2 import Request, Response
from sandbox.registry import Device, DeviceRegistry, Provider, TokenState

# Apple's reference, "Handling notification responses from APNs": each reason with its :status.
REASON_STATUS: Mapping[str, int] = {
    **dict.fromkeys(
        (
            "BadCollapseId",
            "BadDeviceToken",
            "BadExpirationDate",
            "BadMessageId",
            "BadPriority",
            "BadTopic",
            "DeviceTokenNotForTopic",
            "DuplicateHeaders",
            "IdleTimeout",
            "InvalidPushType",
            "MissingDeviceToken",
            "MissingTopic",
            "PayloadEmpty",
            "TopicDisallowed",
        ),
        400,
    ),
    **dict.fromkeys(
        (
            "BadCertificate",
            "BadCertificateEnvironment",
            "ExpiredProviderToken",
            "Forbidden",
            "InvalidProviderToken",
            "MissingProviderToken",
            "UnrelatedKeyIdInToken",
            "BadEnvironmentKeyIdInToken",
            "BadEnvironmentKeyInToken",  # 3p: the spelling APNs has been seen to send (docs/providers.md §5)
        ),
        403,
    ),
    "BadPath": 404,
    "MethodNotAllowed": 405,
    "ExpiredToken": 410,
    "Unregistered": 410,
    "PayloadTooLarge": 413,
    "TooManyProviderTokenUpdates": 429,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "Shutdown": 503,
}

PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
    }
)
PRIORITIES = frozenset({"1", "5", "10"})
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
MAX_COLLAPSE_ID = 64
# Headers whose repetition APNs answers with DuplicateHeaders.
SINGLE_HEADERS = (
    "authorization",
    "apns-id",
    "apns-topic",
    "apns-push-type",
    "apns-priority",
    "apns-expiration",
    "apns-collapse-id",
)
DEFAULT_EXPIRATION_S = 30 * 86_400  # what APNs keeps an undelivered notification for, at most

# Open registration (`mdmq sandbox`): an unknown well-formed token is a live device of the listener's
# environment and the push's topic, except with one of these prefixes, so that a person can try mdmq's
# dead-token and held paths by hand.
UNREGISTERED_PREFIX = "deaddead"  # 410 Unregistered, with the first push's time as its timestamp
OTHER_ENVIRONMENT_PREFIX = "eeeeeeee"  # 400 BadDeviceToken: a token of the other environment
OTHER_TOPIC_PREFIX = "77777777"  # 400 DeviceTokenNotForTopic: a token of another topic
OTHER_TOPIC = "com.apple.mgmt.External.other-topic"

_PATH = re.compile(r"^/3/device/(?P<token>[^/?]*)$")
# Apple: a device token is hex, of no size to assume [A-SEND]. Any other token is BadDeviceToken [A-RESP].
_TOKEN = re.compile(r"^[0-9a-fA-F]+$")
_TOPIC = re.compile(r"^[A-Za-z0-9.\-_]+$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class ApnsEmulator:
    """The request handler of the APNs emulator; `environment` is "development" (sandbox) or "production"."""

    def __init__(self, registry: DeviceRegistry, faults: FaultRuntime, *, environment: str = "development"):
        self.registry = registry
        self.faults = faults
        self.environment = environment
        self.auth = ApnsAuthenticator(registry, environment)

    def __call__(self, request: Request) -> Response:
        fields = dict(reversed(request.headers))  # the first of repeated fields, as `Request.header`
        apns_id = fields.get("apns-id")
        echo_id = apns_id if apns_id is not None and _UUID.match(apns_id) else _new_apns_id()
        try:
            self._push(request, fields, echo_id)
        except ApnsRejected as rejected:
            return self._error(echo_id, rejected.reason, retry_after_s=rejected.retry_after_s)
        except _Unregistered as gone:
            return self._error(echo_id, gone.reason, timestamp_ms=gone.timestamp_ms)
        return Response(200, self._id_headers(echo_id))

    def _push(self, request: Request, fields: Mapping[str, str], apns_id: str) -> None:
        token = _route(request)
        injected = self.faults.pick_error()
        if injected is not None:
            raise ApnsRejected(injected.reason, retry_after_s=injected.retry_after_s)
        if len(fields) != len(request.headers):
            _check_duplicates(request)
        pusher = self.auth.authenticate(fields.get("authorization"), request.connection)
        topic = _topic(fields, pusher)
        push_type = _check_headers(fields)
        if push_type == "mdm":
            _check_mdm_pusher(topic, pusher)
        payload = _payload(request.body, push_type)
        expires_at = self._expiration(fields)
        self._deliver(token, topic, payload, apns_id, expires_at)

    def _expiration(self, fields: Mapping[str, str]) -> float:
        raw = fields.get("apns-expiration")
        now = self.registry.clock()
        if raw is None:
            return now + DEFAULT_EXPIRATION_S
        # 0 means "deliver now or never": the push only reaches a device that is online.
        return float(raw) if raw != "0" else now

    def _deliver(
        self, token: str, topic: str, payload: dict[str, Any], apns_id: str, expires_at: float
    ) -> None:
        if not _TOKEN.match(token):
            raise ApnsRejected("BadDeviceToken")  # [A-RESP] [A-SEND] not hex
        token = token.lower()
        device = self.registry.device(token)
        if device is None and self.registry.open_registration:
            device = self._adopt(token, topic)
        if device is None or device.provider is not Provider.apns:
            raise ApnsRejected("BadDeviceToken")  # [A-RESP] no such token
        if device.environment != self.environment:
            raise ApnsRejected("BadDeviceToken")  # [A-RESP] [A-SEND] a token of the other environment
        if device.state is not TokenState.valid:
            reason = "Unregistered" if device.state is TokenState.unregistered else "ExpiredToken"
            raise _Unregistered(reason, int((device.state_changed_at or 0) * 1000))  # [A-RESP] 410
        if device.topic != topic:
            raise ApnsRejected("DeviceTokenNotForTopic")  # [A-RESP]
        self.registry.accept_push(
            device.token, push_id=apns_id, payload=payload, expires_at=expires_at, keep_only_latest=True
        )

    def _adopt(self, token: str, topic: str) -> Device | None:
        """Open registration: register an unknown token, as the documented prefixes say."""
        environment = self.environment
        if token.startswith(OTHER_ENVIRONMENT_PREFIX):
            environment = "development" if environment == "production" else "production"
        if token.startswith(OTHER_TOPIC_PREFIX):
            topic = OTHER_TOPIC if topic != OTHER_TOPIC else f"{OTHER_TOPIC}.2"
        self.registry.add_apns_device(token, topic=topic, environment=environment)
        if token.startswith(UNREGISTERED_PREFIX):
            self.registry.unregister(token)
        return self.registry.device(token)

    def _id_headers(self, apns_id: str) -> tuple[tuple[str, str], ...]:
        if self.environment == "development":
            return (("apns-id", apns_id), ("apns-unique-id", _new_apns_id()))
        return (("apns-id", apns_id),)

    def _error(
        self, apns_id: str, reason: str, *, timestamp_ms: int | None = None, retry_after_s: int | None = None
    ) -> Response:
        status = REASON_STATUS.get(reason, 400)
        body: dict[str, Any] = {"reason": reason}
        if status == 410:
            body["timestamp"] = (
                timestamp_ms if timestamp_ms is not None else int(self.registry.clock() * 1000)
            )
        headers = (*self._id_headers(apns_id), ("content-type", "application/json"))
        if retry_after_s is not None:
            headers = (*headers, ("retry-after", str(retry_after_s)))
        return Response(status, headers, json.dumps(body).encode())


class _Unregistered(Exception):
    def __init__(self, reason: str, timestamp_ms: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timestamp_ms = timestamp_ms


def _route(request: Request) -> str:
    match = _PATH.match(request.path)
    if match is None:
        raise ApnsRejected("BadPath")
    if request.method != "POST":
        raise ApnsRejected("MethodNotAllowed")
    token = match["token"]
    if not token:
        raise ApnsRejected("MissingDeviceToken")
    return token


def _check_duplicates(request: Request) -> None:
    if any(request.header_count(name) > 1 for name in SINGLE_HEADERS):
        raise ApnsRejected("DuplicateHeaders")


def _new_apns_id() -> str:
    """A random (version 4) UUID, as `str(uuid.uuid4())` but without its two Python-level calls."""
    octets = bytearray(os.urandom(16))
    octets[6] = (octets[6] & 0x0F) | 0x40
    octets[8] = (octets[8] & 0x3F) | 0x80
    text = octets.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _topic(fields: Mapping[str, str], pusher: Pusher) -> str:
    topic = fields.get("apns-topic") or pusher.default_topic
    if topic is None:
        raise ApnsRejected("MissingTopic")
    if not _TOPIC.match(topic):
        raise ApnsRejected("BadTopic")
    if pusher.topics is not None and topic not in pusher.topics:
        raise ApnsRejected("TopicDisallowed")
    return topic


def _check_mdm_pusher(topic: str, pusher: Pusher) -> None:
    """MDM pushes go only over the customer's push certificate, to its subject's UID [A-MDMPUSH].

    Apple documents no answer for an MDM push over a provider token: TopicDisallowed (docs/providers.md §5) is
    a configuration answer, alike for every device, that cannot pass for a device's. A certificate whose UID
    is not the apns-topic is answered the same way: "pushing to this topic is not allowed" [A-RESP].
    """
    if pusher.certificate_uid is None or topic != pusher.certificate_uid:
        raise ApnsRejected("TopicDisallowed")


def _check_headers(fields: Mapping[str, str]) -> str:
    """Validate the apns-* headers; return the push type (APNs assumes alert when none is given)."""
    apns_id = fields.get("apns-id")
    if apns_id is not None and not _UUID.match(apns_id):
        raise ApnsRejected("BadMessageId")
    priority = fields.get("apns-priority")
    if priority is not None and priority not in PRIORITIES:
        raise ApnsRejected("BadPriority")
    expiration = fields.get("apns-expiration")
    if expiration is not None and not expiration.isdigit():
        raise ApnsRejected("BadExpirationDate")
    collapse_id = fields.get("apns-collapse-id")
    if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID:
        raise ApnsRejected("BadCollapseId")
    push_type = fields.get("apns-push-type") or "alert"
    if push_type not in PUSH_TYPES:
        raise ApnsRejected("InvalidPushType")
    return push_type


def _payload(body: bytes, push_type: str) -> dict[str, Any]:
    if not body:
        raise ApnsRejected("PayloadEmpty")
    if len(body) > (MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD):
        raise ApnsRejected("PayloadTooLarge")
    try:
        payload = json.loads(body)
    except ValueError:
        raise ApnsRejected("PayloadEmpty") from None
    if not isinstance(payload, dict) or not payload:
        raise ApnsRejected("PayloadEmpty")
    # An MDM wake-up carries exactly the device's PushMagic: {"mdm": "<PushMagic>"}.
    if push_type == "mdm" and not isinstance(payload.get("mdm"), str):
        raise ApnsRejected("PayloadEmpty")
    return payload
