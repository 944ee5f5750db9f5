"""FCM HTTP v1: one `messages:send` per device token, concurrent over HTTP/2, with a service account."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from hpack import NeverIndexedHeaderTuple

from workers.providers.base import (
    ConnectionFailed,
    CredentialRejected,
    Outcome,
    ProviderError,
    Push,
    PushResult,
    PushType,
)
from workers.providers.credentials import FcmServiceAccount
from workers.providers.endpoints import ProviderEndpoints
from workers.providers.fcm_oauth import AccessToken, AccessTokenSource, token_path
from workers.providers.http2 import Response, StreamUnanswered
from workers.providers.timing import timed

QUOTA_MIN_RETRY_S = 60.0  # [F-QUOTA] wait at least a minute after QUOTA_EXCEEDED
MAX_TTL_S = 2_419_200  # [F-TTL] [F-MSG] android.ttl: at most four weeks
_CONNECT_FAILED = "ConnectionFailed"
_FCM_ERROR_TYPE = "google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE = "google.rpc.BadRequest"

# What an admin fixes when an answer turns out to be the organization's (names no secret; < 190 chars).
ADVICE_SENDER_ID_MISMATCH = (
    "the service account belongs to another Firebase project than the devices' app: "
    "upload the service account of the app's project"
)
ADVICE_INVALID_REGISTRATION = (
    "FCM calls the devices' tokens invalid: the service account or project does not match the devices' "
    "app: upload the service account of the app's Firebase project"
)
ADVICE_THIRD_PARTY_AUTH = (
    "the APNs certificate or key stored in the Firebase project is missing or invalid: "
    "fix it in the Firebase console"
)
ADVICE_NOT_FOUND = (
    "FCM does not know the project or path sent to: check the project id stored with the service account"
)
ADVICE_REFUSED = (
    "Google refused the service account for this project: check the project id and that the account "
    "may send with FCM (cloudmessaging.messages.create)"
)

# [F-ERR] [F-CODES] each errorCode of the FcmError detail, with whose problem it is (docs/providers.md §2).
_OUTCOME_BY_ERROR_CODE: Mapping[str, Outcome] = {
    "UNREGISTERED": Outcome.permanent,  # [F-ERR] [F-TOK] the app instance is gone
    "SENDER_ID_MISMATCH": Outcome.dead_token,  # [F-ERR] ambiguous: another project's account says it for all
    "INVALID_ARGUMENT": Outcome.payload_rejected,  # [F-ERR] unless it says the token is invalid: below
    "THIRD_PARTY_AUTH_ERROR": Outcome.config,  # [F-ERR] the APNs key in Firebase, not the service account
    "QUOTA_EXCEEDED": Outcome.transient,  # [F-ERR] [F-QUOTA] at least a minute
    "UNAVAILABLE": Outcome.transient,  # [F-ERR] honour Retry-After
    "INTERNAL": Outcome.transient,  # [F-ERR] retry as for UNAVAILABLE
    "UNSPECIFIED_ERROR": Outcome.transient,  # [F-ERR] nothing known: never the device's
}
_ADVICE: Mapping[str, str] = {
    "SENDER_ID_MISMATCH": ADVICE_SENDER_ID_MISMATCH,
    "THIRD_PARTY_AUTH_ERROR": ADVICE_THIRD_PARTY_AUTH,
}
# The provider's documented words, for the metrics' reason label.
KNOWN_ERROR_CODES = frozenset(_OUTCOME_BY_ERROR_CODE) | {"NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED"}
DOCUMENTED_OUTCOMES = _OUTCOME_BY_ERROR_CODE  # the outcome each documented code means, for the metrics
# [G-CODE] Google's front end refuses the caller (OAuth token, permission) before FCM reads the message.
_REFUSED_STATUSES = frozenset({401, 403})


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
        project = quote(credential.project_id, safe="")  # nothing raw from an upload reaches the path
        self._project_path = f"/v1/projects/{project}/messages:send".encode()
        self._pool = endpoints.pool(endpoints.fcm, max_connections=max_connections)
        self._oauth_pool = endpoints.pool(endpoints.oauth_token, max_connections=1)
        self.tokens = AccessTokenSource(
            credential, self._oauth_pool, token_path(endpoints.oauth_token), clock=clock
        )

    async def send(self, pushes: Sequence[Push]) -> list[PushResult]:
        """One result per push, in order. Raises CredentialRejected (OAuth refused), ClockSkewRefused (the
        assertion was refused for this host's clock) or ConnectionFailed."""
        await self.tokens.current()  # an OAuth failure concerns the whole batch: it raises before any send
        results = list(await asyncio.gather(*(self._send_one(push) for push in pushes)))
        if results and all(result.reason == _CONNECT_FAILED for result in results):
            raise ConnectionFailed(f"cannot reach FCM at {self._pool.origin.host}:{self._pool.origin.port}")
        return results

    async def close(self) -> None:
        await asyncio.gather(self._pool.close(), self._oauth_pool.close())

    @property
    def connection_count(self) -> int:
        return self._pool.connection_count + self._oauth_pool.connection_count

    async def _send_one(self, push: Push) -> PushResult:
        body = json.dumps({"message": _message(push)}, separators=(",", ":")).encode()
        token = await self.tokens.current()
        result = await self._post(push, body, token)
        if result.outcome is not Outcome.credential:
            return result
        # [F-SEND] [G-CODE] 401/403 without an FcmError: the access token may have been revoked before its
        # time. Fetch another and try once more; a second refusal is the service account's.
        self.tokens.forget(token)
        try:
            token = await self.tokens.current()
        except CredentialRejected:
            return PushResult(push.device_id, Outcome.credential, None, 401, "OAUTH_REFUSED")
        except ProviderError:  # unreachable, or a skewed clock: nothing said about the account
            return PushResult(push.device_id, Outcome.transient, None, None, "OAUTH_UNAVAILABLE")
        return await self._post(push, body, token)

    async def _post(self, push: Push, body: bytes, token: AccessToken) -> PushResult:
        headers = self._pool.request_headers(b"POST", self._project_path)
        # Never indexed (RFC 7541 7.1.3), and so never kept in the process's cache of header encodings.
        headers += [NeverIndexedHeaderTuple(b"authorization", token.authorization)]
        headers.append((b"content-type", b"application/json"))
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
        "ttl": f"{_ttl_s(push)}s",
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


def _ttl_s(push: Push) -> int:
    return min(max(push.expiration_s, 0), MAX_TTL_S)


def _result(push: Push, response: Response, sent_at: datetime) -> PushResult:
    answer = response.json_object()
    if answer is None:
        return _unreadable(push, response)
    if response.status == 200:
        return _accepted(push, answer, sent_at)
    error = answer.get("error")
    return _refused(push, response, error if isinstance(error, dict) else {}, sent_at)


def _unreadable(push: Push, response: Response) -> PushResult:
    """Not FCM's JSON: a front end spoke (an HTML 404 for an unknown path, a 502), or it was cut short."""
    if response.status == 404:  # an unknown path, or a project id Google cannot route: ours to fix
        return PushResult(
            push.device_id, Outcome.config, None, 404, response.unreadable(), advice=ADVICE_NOT_FOUND
        )
    return PushResult(push.device_id, Outcome.transient, None, response.status, response.unreadable())


def _accepted(push: Push, answer: Mapping[str, Any], sent_at: datetime) -> PushResult:
    name = answer.get("name")
    expires_at = datetime.fromtimestamp(sent_at.timestamp() + _ttl_s(push), UTC)
    push_id = name if isinstance(name, str) else None
    return PushResult(push.device_id, Outcome.accepted, push_id, 200, sent_at=sent_at, expires_at=expires_at)


def _refused(push: Push, response: Response, error: Mapping[str, Any], sent_at: datetime) -> PushResult:
    code = _error_code(error)
    reason = code or str(error.get("status") or "") or None
    outcome, advice = _judge(response.status, code, error)
    retry = response.retry_after_s() if outcome is Outcome.transient else None
    if code == "QUOTA_EXCEEDED":
        retry = max(retry or 0.0, QUOTA_MIN_RETRY_S)
    return PushResult(
        push.device_id,
        outcome,
        None,
        response.status,
        reason,
        retry_after_s=retry,
        advice=advice,
        sent_at=sent_at,
    )


def _error_code(error: Mapping[str, Any]) -> str | None:
    """[F-CODES] the errorCode of the FcmError detail; None when Google's front end answered alone."""
    for detail in _details(error):
        if str(detail.get("@type", "")).endswith(_FCM_ERROR_TYPE):
            code = detail.get("errorCode")
            return code if isinstance(code, str) else None
    return None


def _details(error: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    details = error.get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _judge(status: int, code: str | None, error: Mapping[str, Any]) -> tuple[Outcome, str | None]:
    """The outcome of a refusal and, where it may be the organization's, the advice that fixes it."""
    if code is None:
        return _judge_without_code(status)
    if code == "INVALID_ARGUMENT" and _says_token_invalid(error):
        # [F-CODES] [F-TOK] "not a valid FCM registration token": the device's, or every device's when the
        # account or project does not match the app; the dispatch judges which.
        return Outcome.dead_token, ADVICE_INVALID_REGISTRATION
    known = _OUTCOME_BY_ERROR_CODE.get(code)
    if known is not None:
        return known, _ADVICE.get(code)
    # An errorCode Google has not documented: never the device's.
    return (Outcome.transient if status == 429 or status >= 500 else Outcome.payload_rejected), None


def _judge_without_code(status: int) -> tuple[Outcome, str | None]:
    if status == 404:
        # No FcmError: not UNREGISTERED but an unknown project or path, which no device can cause.
        return Outcome.config, ADVICE_NOT_FOUND
    if status in _REFUSED_STATUSES:
        # [F-SEND] [G-CODE] UNAUTHENTICATED / PERMISSION_DENIED: the caller refreshes the OAuth token once.
        return Outcome.credential, ADVICE_REFUSED
    if status == 429 or status >= 500:
        return Outcome.transient, None
    # [F-ERR] [F-CODES] a 400 without details (3p): a field of the message we built.
    return Outcome.payload_rejected, None


def _says_token_invalid(error: Mapping[str, Any]) -> bool:
    """[F-CODES] INVALID_ARGUMENT about the token, not about a field: no BadRequest violations, and
    Google's message names the registration token."""
    if any(str(d.get("@type", "")).endswith(_BAD_REQUEST_TYPE) for d in _details(error)):
        return False
    return "registration token" in str(error.get("message", "")).lower()
