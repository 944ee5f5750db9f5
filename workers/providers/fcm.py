"""FCM HTTP v1: one `messages:send` per device token, concurrent over HTTP/2, with a service account."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from workers.providers.base import ConnectionFailed, CredentialRejected, Outcome, Push, PushResult, PushType
from workers.providers.credentials import FcmServiceAccount
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.fcm_oauth import AccessToken, AccessTokenSource, token_path
from workers.providers.http2 import Response, StreamUnanswered
from workers.providers.timing import timed

QUOTA_MIN_RETRY_S = 60.0  # FCM asks senders over quota to wait at least a minute
_CONNECT_FAILED = "ConnectionFailed"

_OUTCOME_BY_ERROR_CODE: Mapping[str, Outcome] = {
    "UNREGISTERED": Outcome.permanent,
    "SENDER_ID_MISMATCH": Outcome.permanent,
    "INVALID_ARGUMENT": Outcome.payload_rejected,
    "QUOTA_EXCEEDED": Outcome.transient,
    "UNAVAILABLE": Outcome.transient,
    "INTERNAL": Outcome.transient,
    "THIRD_PARTY_AUTH_ERROR": Outcome.credential,
}
# The provider's documented words, for the metrics' reason label.
KNOWN_ERROR_CODES = frozenset(_OUTCOME_BY_ERROR_CODE)
_OUTCOME_BY_STATUS: Mapping[int, Outcome] = {
    401: Outcome.credential,
    403: Outcome.credential,  # PERMISSION_DENIED from Google's front end: the account may not send
    404: Outcome.permanent,
    429: Outcome.transient,
}


class FcmProvider:
    """Sends pushes for one service account; every push is its own request, multiplexed on HTTP/2."""

    def __init__(
        self,
        credential: FcmServiceAccount,
        endpoints: ProviderEndpoints,
        *,
        max_connections: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._project_path = f"/v1/projects/{credential.project_id}/messages:send".encode()
        self._pool = endpoints.pool(endpoints.fcm, max_connections=max_connections)
        self._oauth_pool = endpoints.pool(endpoints.oauth_token, max_connections=1)
        self.tokens = AccessTokenSource(
            credential, self._oauth_pool, token_path(endpoints.oauth_token), clock=clock
        )

    async def send(self, pushes: Sequence[Push]) -> list[PushResult]:
        """One result per push, in order. Raises CredentialRejected (OAuth refused) or ConnectionFailed."""
        await self.tokens.current()  # an OAuth failure concerns the whole batch: it raises before any send
        results = list(await asyncio.gather(*(self._send_one(push) for push in pushes)))
        if results and all(result.reason == _CONNECT_FAILED for result in results):
            raise ConnectionFailed(f"cannot reach FCM at {self._pool.origin.host}:{self._pool.origin.port}")
        return results

    async def close(self) -> None:
        await asyncio.gather(self._pool.close(), self._oauth_pool.close())

    async def _send_one(self, push: Push) -> PushResult:
        body = json.dumps({"message": _message(push)}, separators=(",", ":")).encode()
        token = await self.tokens.current()
        result = await self._post(push, body, token)
        if result.status == 401 and result.reason == "UNAUTHENTICATED":
            # The access token was revoked before its time: fetch another and try once more.
            self.tokens.forget(token)
            try:
                token = await self.tokens.current()
            except CredentialRejected:
                return PushResult(push.device_id, Outcome.credential, None, 401, "OAUTH_REFUSED")
            except ConnectionFailed:
                return PushResult(push.device_id, Outcome.transient, None, None, "OAUTH_UNAVAILABLE")
            result = await self._post(push, body, token)
        return result

    async def _post(self, push: Push, body: bytes, token: AccessToken) -> PushResult:
        headers = self._pool.request_headers(b"POST", self._project_path)
        headers += [(b"authorization", token.authorization), (b"content-type", b"application/json")]
        sent_at = datetime.now(UTC)
        try:
            response = await timed("fcm", self._pool.request(headers, body))
        except StreamUnanswered as e:
            return PushResult(push.device_id, Outcome.transient, reason=f"Unanswered: {e.reason}")
        except ConnectionFailed:
            return PushResult(push.device_id, Outcome.transient, reason=_CONNECT_FAILED)
        return _result(push, response, sent_at)


def _message(push: Push) -> dict[str, Any]:
    android: dict[str, Any] = {
        "priority": "high" if push.priority >= 10 else "normal",
        "ttl": f"{max(push.expiration_s, 0)}s",
    }
    if push.collapse_id:
        android["collapse_key"] = push.collapse_id
    message: dict[str, Any] = {"token": push.token, "android": android}
    payload = dict(push.payload or {})
    if push.push_type is PushType.alert and ("title" in payload or "body" in payload):
        message["notification"] = {k: str(payload.pop(k)) for k in ("title", "body") if k in payload}
    # FCM data values are strings only; structured values travel as JSON text.
    message["data"] = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in payload.items()}
    return message


def _result(push: Push, response: Response, sent_at: datetime) -> PushResult:
    answer = response.json_object()
    if answer is None:  # not FCM's answer: something in front of it spoke, or the answer was cut short
        return PushResult(push.device_id, Outcome.transient, None, response.status, response.unreadable())
    if response.status == 200:
        name = answer.get("name")
        expires_at = datetime.fromtimestamp(sent_at.timestamp() + push.expiration_s, UTC)
        push_id = name if isinstance(name, str) else None
        return PushResult(
            push.device_id, Outcome.accepted, push_id, 200, sent_at=sent_at, expires_at=expires_at
        )
    error = answer.get("error")
    error = error if isinstance(error, dict) else {}
    reason = _error_code(error) or str(error.get("status") or "") or None
    outcome = _outcome(response.status, reason, error)
    retry = response.retry_after_s() if outcome is Outcome.transient else None
    if reason == "QUOTA_EXCEEDED":
        retry = max(retry or 0.0, QUOTA_MIN_RETRY_S)
    return PushResult(
        push.device_id, outcome, None, response.status, reason, retry_after_s=retry, sent_at=sent_at
    )


def _error_code(error: Mapping[str, Any]) -> str | None:
    for detail in error.get("details") or ():
        if isinstance(detail, dict) and detail.get("@type", "").endswith("google.firebase.fcm.v1.FcmError"):
            code = detail.get("errorCode")
            return code if isinstance(code, str) else None
    return None


def _outcome(status: int, reason: str | None, error: Mapping[str, Any]) -> Outcome:
    if reason == "INVALID_ARGUMENT" and _names_the_token(error):
        # Google's docs: INVALID_ARGUMENT also means "invalid registration" — then the token is dead.
        return Outcome.permanent
    known = _OUTCOME_BY_ERROR_CODE.get(reason or "")
    if known is not None:
        return known
    if status in _OUTCOME_BY_STATUS:
        return _OUTCOME_BY_STATUS[status]
    return Outcome.transient if status >= 500 else Outcome.payload_rejected


def _names_the_token(error: Mapping[str, Any]) -> bool:
    message = str(error.get("message", "")).lower()
    if "registration token" in message:
        return True
    for detail in error.get("details") or ():
        for violation in (detail.get("fieldViolations") or ()) if isinstance(detail, dict) else ():
            if isinstance(violation, dict) and violation.get("field") == "message.token":
                return True
    return False
