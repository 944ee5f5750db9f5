"""A Pushy-compatible push service for AOSP devices: one request wakes many devices; it reports delivery."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from hpack import NeverIndexedHeaderTuple

from workers.providers.base import ConnectionFailed, Outcome, ProviderError, Push, PushResult
from workers.providers.credentials import AospApiKey
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.http2 import Response, StreamUnanswered
from workers.providers.timing import timed

MAX_RECIPIENTS = 1000  # per request: Pushy takes 100,000, but a smaller request fails less at once
MAX_TTL_S = 365 * 86_400

# What an admin fixes if the answer turns out to be the organization's (names no secret).
ADVICE_FAILED_TOKENS = (
    "the AOSP push service does not know these devices' tokens under this API key: "
    "check the key belongs to the devices' app"
)

# [P-API] [P-SEND] the global error codes, with whose problem each is (docs/providers.md §3).
_OUTCOME_BY_CODE: Mapping[str, Outcome] = {
    "MISSING_API_KEY": Outcome.credential,
    "INVALID_API_KEY": Outcome.credential,
    # Ambiguous: none of the tokens is known under this key, which another app's key says for every one.
    "NO_RECIPIENTS": Outcome.dead_token,
    "INVALID_PARAM": Outcome.payload_rejected,
    "PAYLOAD_LIMIT_EXCEEDED": Outcome.payload_rejected,
    "RATE_LIMIT_EXCEEDED": Outcome.transient,
    "INTERNAL_SERVER_ERROR": Outcome.transient,
    "SERVICE_UNAVAILABLE": Outcome.transient,
}
# The provider's documented words, for the metrics' reason label ("failed": a token of `info.failed`).
KNOWN_CODES = frozenset(_OUTCOME_BY_CODE) | {"failed", "INVALID_PUSH_ID"}
DOCUMENTED_OUTCOMES = _OUTCOME_BY_CODE  # the outcome each documented code means, for the metrics


class PushGone(ProviderError):
    """[P-STAT] INVALID_PUSH_ID: the service no longer tracks this push. Older documents say a push is
    dropped once expired *or* delivered to every device, so this is no failure: the caller stops polling
    and decides by the expiry it stored."""


@dataclass(frozen=True, slots=True)
class PushStatus:
    """What the push service says about one push: how many devices still wait for it, and until when."""

    push_id: str
    pending_devices: int
    sent_at: datetime | None
    expires_at: datetime | None
    pending_tokens: tuple[str, ...] = field(default=(), repr=False)

    @property
    def delivered(self) -> bool:
        return self.pending_devices == 0


class AospProvider:
    """Sends pushes for one API key: pushes with the same content go together in one request."""

    def __init__(
        self,
        credential: AospApiKey,
        endpoints: ProviderEndpoints,
        *,
        max_connections: int = 2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = endpoints.pool(endpoints.aosp, max_connections=max_connections)
        self._key_query = b"?api_key=" + quote(credential.api_key, safe="").encode()
        self._clock = clock

    async def send(self, pushes: Sequence[Push]) -> list[PushResult]:
        """One result per push, in order; pushes of one request share its push id."""
        groups = _groups(pushes)
        answers = await asyncio.gather(*(self._send_group([pushes[i] for i in group]) for group in groups))
        by_device: dict[int, PushResult] = {}
        for group, results_of_group in zip(groups, answers, strict=True):
            by_device.update(zip(group, results_of_group, strict=True))
        results = [by_device[i] for i in range(len(pushes))]
        if results and all(result.reason == "ConnectionFailed" for result in results):
            raise ConnectionFailed(f"cannot reach the AOSP push service at {self._pool.origin.host}")
        return results

    async def poll(self, push_id: str) -> PushStatus:
        """The delivery status of one push. Raises PushGone (no longer tracked), ProviderError (no status) or
        ConnectionFailed."""
        path = b"/pushes/" + quote(push_id, safe="").encode() + self._key_query
        try:
            response = await self._pool.request(self._pool.request_headers(b"GET", _secret_path(path)))
        except StreamUnanswered as e:
            raise ConnectionFailed(f"the AOSP push service did not answer: {e.reason}") from None
        answer = response.json_object() or {}
        push = answer.get("push")
        if answer.get("code") == "INVALID_PUSH_ID":  # [P-STAT] invalid, expired, or delivered to all
            raise PushGone(f"push {push_id}: INVALID_PUSH_ID")
        if response.status != 200 or not isinstance(push, dict):
            raise ProviderError(f"push {push_id}: {answer.get('code') or response.status}")
        pending = [token for token in push.get("pending_devices") or () if isinstance(token, str)]
        return PushStatus(
            push_id, len(pending), _time(push.get("date")), _time(push.get("expiration")), tuple(pending)
        )

    async def close(self) -> None:
        await self._pool.close()

    @property
    def connection_count(self) -> int:
        return self._pool.connection_count

    async def _send_group(self, pushes: list[Push]) -> list[PushResult]:
        first = pushes[0]
        ttl_s = min(max(first.expiration_s, 1), MAX_TTL_S)
        body = {
            "to": [push.token for push in pushes],
            "data": dict(first.payload or {}),
            "time_to_live": ttl_s,
        }
        headers = self._pool.request_headers(b"POST", _secret_path(b"/push" + self._key_query))
        headers.append((b"content-type", b"application/json"))
        sent_at = datetime.fromtimestamp(self._clock(), UTC)
        try:
            payload = json.dumps(body, separators=(",", ":")).encode()
            response = await timed("aosp", self._pool.request(headers, payload))
        except StreamUnanswered as e:
            return [
                PushResult(p.device_id, Outcome.transient, reason=f"Unanswered: {e.reason}") for p in pushes
            ]
        except ConnectionFailed:
            return [PushResult(p.device_id, Outcome.transient, reason="ConnectionFailed") for p in pushes]
        return _results(pushes, response, sent_at, ttl_s)


def _groups(pushes: Sequence[Push]) -> list[list[int]]:
    """Indexes of pushes that can share one request: same data and lifetime, at most MAX_RECIPIENTS each."""
    groups: dict[tuple[str, int], list[list[int]]] = {}
    for index, push in enumerate(pushes):
        key = (json.dumps(push.payload or {}, sort_keys=True), push.expiration_s)
        chunks = groups.setdefault(key, [[]])
        if len(chunks[-1]) >= MAX_RECIPIENTS:
            chunks.append([])
        chunks[-1].append(index)
    return [chunk for chunks in groups.values() for chunk in chunks]


def _results(pushes: list[Push], response: Response, sent_at: datetime, ttl_s: int) -> list[PushResult]:
    answer = response.json_object()
    if answer is None or (response.status == 200 and answer.get("success") is not True):
        # Not the push service's answer: something in front of it spoke, or the answer was cut short.
        reason = response.unreadable()
        return [PushResult(p.device_id, Outcome.transient, None, response.status, reason) for p in pushes]
    if response.status == 200:
        return _sent(pushes, answer, sent_at, ttl_s)
    code = answer.get("code") if isinstance(answer.get("code"), str) else None
    outcome = _OUTCOME_BY_CODE.get(code or "") or _outcome_by_status(response.status)
    retry = response.retry_after_s() if outcome is Outcome.transient else None
    advice = ADVICE_FAILED_TOKENS if outcome is Outcome.dead_token else None
    return [
        PushResult(p.device_id, outcome, None, response.status, code, retry_after_s=retry, advice=advice)
        for p in pushes
    ]


def _sent(pushes: list[Push], answer: Mapping[str, Any], sent_at: datetime, ttl_s: int) -> list[PushResult]:
    push_id = str(answer.get("id"))
    info = answer.get("info")
    listed = info.get("failed") if isinstance(info, dict) else None
    failed = {t for t in listed if isinstance(t, str)} if isinstance(listed, list) else set()
    expires_at = datetime.fromtimestamp(sent_at.timestamp() + ttl_s, UTC)
    return [
        _failed(p, push_id, sent_at)
        if p.token in failed
        else PushResult(p.device_id, Outcome.accepted, push_id, 200, sent_at=sent_at, expires_at=expires_at)
        for p in pushes
    ]


def _failed(push: Push, push_id: str, sent_at: datetime) -> PushResult:
    """[P-SEND] a token of `info.failed`: not pushed to under this key. Ambiguous: a key of another app
    fails them all (docs/providers.md §3), so the dispatch judges whose it is."""
    return PushResult(
        push.device_id,
        Outcome.dead_token,
        push_id,
        200,
        "failed",
        advice=ADVICE_FAILED_TOKENS,
        sent_at=sent_at,
    )


def _outcome_by_status(status: int) -> Outcome:
    """[P-API] a code mdmq does not know: 401/403 the key's, 429/5xx nobody's, any other the request's."""
    if status in (401, 403):
        return Outcome.credential
    if status == 429 or status >= 500:
        return Outcome.transient
    return Outcome.payload_rejected


def _time(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return datetime.fromtimestamp(value, UTC)


def _secret_path(path: bytes) -> NeverIndexedHeaderTuple:
    # The path carries the API key: never indexed (RFC 7541 7.1.3), and so never kept in the process's
    # cache of header encodings.
    return NeverIndexedHeaderTuple(b":path", path)
