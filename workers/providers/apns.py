"""APNs over HTTP/2: MDM wake-ups with the organization's MDM push certificate (TLS client certificate).

MDM has no token-based authentication: the certificate-based process is the only way to send MDM pushes, one
certificate per customer, whose subject UID is the topic [A-MDMPUSH].
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from hpack import NeverIndexedHeaderTuple

from workers.providers.apns_reasons import answer_for, invalid_since
from workers.providers.base import (
    ConnectionFailed,
    CredentialRejected,
    Outcome,
    Push,
    PushResult,
    PushType,
)
from workers.providers.credentials import ApnsCertificate
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.http2 import Http2Pool, Origin, Response, StreamUnanswered
from workers.providers.timing import timed
from workers.providers.tls import ClientCertificateContext, key_type

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 4096  # APNs refuses larger bodies with 413 PayloadTooLarge; we refuse them first.
_TOO_LARGE = "PayloadTooLarge"
_UNANSWERED = "Unanswered"
_CONNECT_FAILED = "ConnectionFailed"


class ApnsProvider:
    """Sends pushes for one APNs push certificate over a pool of multiplexed HTTP/2 connections."""

    __slots__ = (
        "_clock",
        "_not_after",
        "_pool",
        "_topic",
    )

    def __init__(
        self,
        credential: ApnsCertificate,
        endpoints: ProviderEndpoints,
        *,
        max_connections: int = 4,
        request_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Only what a send reads of the credential, and the PEM text of its certificate and key (some 3 KB)
        # that each connection loads, the credential's own strings (which the cache of loaded credentials
        # shares): a provider is kept for each of up to thousands of organizations.
        self._not_after = credential.not_after
        self._clock = clock
        # The certificate's subject UID [A-MDMPUSH]: APNs refuses another topic (TopicDisallowed).
        self._topic = credential.topic.encode()
        origin = Origin.from_url(endpoints.apns(credential.environment))
        self._pool = Http2Pool(
            origin,
            ssl_context=_client_certificate(credential, origin, endpoints),
            max_connections=max_connections,
            request_timeout_s=request_timeout_s,
        )

    @property
    def connection_count(self) -> int:
        return self._pool.connection_count

    async def send(self, pushes: Sequence[Push]) -> list[PushResult]:
        """One result per push, in order. Raises ConnectionFailed only if no push could reach APNs at all."""
        self._refuse_expired_certificate()
        results = list(await asyncio.gather(*(self._send_one(push) for push in pushes)))
        if results and all(result.reason == _CONNECT_FAILED for result in results):
            raise ConnectionFailed(f"cannot reach APNs at {self._pool.origin.host}:{self._pool.origin.port}")
        return results

    async def close(self) -> None:
        await self._pool.close()

    def _refuse_expired_certificate(self) -> None:
        if datetime.fromtimestamp(self._clock(), UTC) >= self._not_after:
            raise CredentialRejected(
                f"the APNs certificate for {self._topic.decode()} expired on {self._not_after}"
            )

    async def _send_one(self, push: Push) -> PushResult:
        body = _body(push)
        if body is None:
            return PushResult(push.device_id, Outcome.payload_rejected, reason="MissingPushMagic")
        if len(body) > MAX_PAYLOAD_BYTES:
            return PushResult(push.device_id, Outcome.payload_rejected, reason=_TOO_LARGE)
        return await self._post(push, str(uuid.uuid4()), body)

    async def _post(self, push: Push, apns_id: str, body: bytes) -> PushResult:
        headers = self._headers(push, apns_id)
        sent_at = datetime.now(UTC)
        try:
            response = await timed("apns", self._pool.request(headers, body))
        except StreamUnanswered as e:
            return PushResult(push.device_id, Outcome.transient, apns_id, reason=f"{_UNANSWERED}: {e.reason}")
        except ConnectionFailed:
            return PushResult(push.device_id, Outcome.transient, apns_id, reason=_CONNECT_FAILED)
        return _result(push, apns_id, response, sent_at)

    def _headers(self, push: Push, apns_id: str) -> list[tuple[bytes, bytes]]:
        headers = self._pool.request_headers(b"POST", _device_path(push.token))
        headers += [
            NeverIndexedHeaderTuple(b"apns-id", apns_id.encode()),
            (b"apns-topic", self._topic),
            (b"apns-push-type", _push_type(push).encode()),
            (b"apns-priority", str(_priority(push)).encode()),
            (b"apns-expiration", str(_expiration(push, self._clock())).encode()),
        ]
        if push.collapse_id:
            headers.append((b"apns-collapse-id", push.collapse_id.encode()))
        return headers


def _device_path(token: str) -> NeverIndexedHeaderTuple:
    # Never indexed: each path is used once, and a device token has no place in a compression table.
    return NeverIndexedHeaderTuple(b":path", b"/3/device/" + token.encode())


def _body(push: Push) -> bytes | None:
    if push.push_type is PushType.mdm:
        # An MDM wake-up carries only the PushMagic the device gave at enrolment.
        return None if not push.push_magic else json.dumps({"mdm": push.push_magic}).encode()
    payload: dict[str, Any] = dict(push.payload or {})
    if push.push_type is PushType.background:
        payload.setdefault("aps", {"content-available": 1})
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _push_type(push: Push) -> str:
    if push.push_type is PushType.data:
        return PushType.background.value  # the closest APNs has to a silent data message
    return push.push_type.value


def _priority(push: Push) -> int:
    # APNs refuses priority 10 for background pushes; they are sent at 5 whatever was asked.
    return 5 if _push_type(push) == PushType.background else push.priority


def _expiration(push: Push, now_s: float) -> int:
    # 0 means "deliver once or never"; anything else is an absolute UNIX time.
    return 0 if push.expiration_s <= 0 else int(now_s) + push.expiration_s


def _result(push: Push, apns_id: str, response: Response, sent_at: datetime) -> PushResult:
    push_id = response.header(b"apns-id") or apns_id
    error = response.json_object()
    if error is None:  # not APNs's answer: something in front of it spoke, or the answer was cut short
        return PushResult(push.device_id, Outcome.transient, None, response.status, response.unreadable())
    if response.status == 200:
        expires_at = datetime.fromtimestamp(sent_at.timestamp() + push.expiration_s, UTC)
        return PushResult(
            push.device_id, Outcome.accepted, push_id, 200, sent_at=sent_at, expires_at=expires_at
        )
    reason = error.get("reason") if isinstance(error.get("reason"), str) else None
    answer = answer_for(response.status, reason)
    return PushResult(
        push.device_id,
        answer.outcome,
        push_id,
        response.status,
        reason,
        # APNs documents no Retry-After [A-RESP]; one sent by something in front of it is still honoured.
        retry_after_s=response.retry_after_s() if answer.outcome is Outcome.transient else None,
        advice=answer.advice,
        token_invalid_since=invalid_since(error.get("timestamp")) if response.status == 410 else None,
        sent_at=sent_at,
    )


def _client_certificate(
    credential: ApnsCertificate, origin: Origin, endpoints: ProviderEndpoints
) -> ClientCertificateContext | None:
    # Cleartext h2c (an emulator's `http://` URL) carries no client certificate: APNs itself is TLS only.
    if origin.scheme != "https":
        return None
    try:
        kind = key_type(credential.certificate_pem)
    except ValueError:
        raise CredentialRejected("the APNs certificate cannot be read") from None
    shared = endpoints.shared_tls_context(client_key_type=kind)
    try:
        return ClientCertificateContext(shared, credential.certificate_pem, credential.private_key_pem)
    except ssl.SSLError:
        raise CredentialRejected("the APNs certificate and its key do not match") from None
