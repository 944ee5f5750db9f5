"""The FCM HTTP v1 emulator: `POST /token` (OAuth) and `POST /v1/projects/<p>/messages:send`."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

from sandbox.faults import FaultRuntime
from sandbox.google_oauth import ACCESS_TOKEN_TTL_S, OAuthRejected, TokenIssuer
from sandbox.http2 import Request, Response
from sandbox.registry import DeviceRegistry, Provider, TokenState

# FCM's ErrorCode reference: each errorCode with its HTTP status and google.rpc status.
ERROR_STATUS: Mapping[str, tuple[int, str]] = {
    "UNSPECIFIED_ERROR": (500, "INTERNAL"),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT"),
    "UNREGISTERED": (404, "NOT_FOUND"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED"),
    "UNAVAILABLE": (503, "UNAVAILABLE"),
    "INTERNAL": (500, "INTERNAL"),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED"),
}
_MESSAGES: Mapping[str, str] = {
    "UNSPECIFIED_ERROR": "Unknown error.",
    "INVALID_ARGUMENT": "Request contains an invalid argument.",
    "UNREGISTERED": "Requested entity was not found.",
    "SENDER_ID_MISMATCH": "SenderId mismatch",
    "QUOTA_EXCEEDED": "Quota exceeded for quota metric 'Send messages'.",
    "UNAVAILABLE": "The service is currently unavailable.",
    "INTERNAL": "Internal error encountered.",
    "THIRD_PARTY_AUTH_ERROR": "Auth error from APNS or Web Push Service",
}
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
MAX_PAYLOAD = 4096
QUOTA_RETRY_AFTER_S = 60  # FCM asks senders over quota to wait at least a minute
DEFAULT_TTL_S = 28 * 86_400  # FCM keeps a message for at most four weeks
_SEND_PATH = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")
_JSON = (("content-type", "application/json; charset=UTF-8"),)


class FcmError(Exception):
    def __init__(self, error_code: str, message: str | None = None, *, retry_after_s: int | None = None):
        super().__init__(error_code)
        self.error_code = error_code
        self.message = message or _MESSAGES.get(error_code, "Error.")
        self.retry_after_s = retry_after_s


class _GoogleError(Exception):
    """An error Google's front end answers before FCM looks at the message: no FcmError detail."""

    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(status)
        self.code, self.status, self.message = code, status, message


class FcmEmulator:
    def __init__(self, registry: DeviceRegistry, faults: FaultRuntime) -> None:
        self.registry = registry
        self.faults = faults
        self.issuer = TokenIssuer(registry)

    def __call__(self, request: Request) -> Response:
        path = request.path.split("?", 1)[0]
        if path == "/token" and request.method == "POST":
            return self._token(request)
        match = _SEND_PATH.match(path)
        if match is None or request.method != "POST":
            return _google_error(_GoogleError(404, "NOT_FOUND", "The requested URL was not found."))
        try:
            return self._send(request, match["project"])
        except FcmError as error:
            return _fcm_error(error)
        except _GoogleError as error:
            return _google_error(error)

    # -- OAuth -----------------------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        own_url = f"{'https' if request.connection.tls else 'http'}://{request.authority}/token"
        try:
            token, _ = self.issuer.exchange(request.body, own_url)
        except OAuthRejected as rejected:
            body = {"error": rejected.error, "error_description": rejected.description}
            return Response(400, _JSON, json.dumps(body).encode())
        body_ok = {"access_token": token, "expires_in": ACCESS_TOKEN_TTL_S, "token_type": "Bearer"}
        return Response(200, _JSON, json.dumps(body_ok).encode())

    # -- send ------------------------------------------------------------------------------------

    def _send(self, request: Request, project: str) -> Response:
        self._authorize(request.header("authorization"), project)
        injected = self.faults.pick_error()
        if injected is not None:
            raise FcmError(injected.reason, retry_after_s=injected.retry_after_s)
        message, validate_only = _parse_message(request.body)
        token, data = _target_and_data(message)
        if validate_only:
            self._check_recipient(token, project)
            push_id = "fake_message_id"
        else:
            push_id = self._deliver(token, data, _ttl_s(message), project)
        return Response(200, _JSON, json.dumps({"name": f"projects/{project}/messages/{push_id}"}).encode())

    def _authorize(self, authorization: str | None, project: str) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        access = self.issuer.lookup(token) if scheme.lower() == "bearer" else None
        if access is None:
            raise _GoogleError(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
            )
        if not access.allows_fcm():
            raise _GoogleError(403, "PERMISSION_DENIED", "Request had insufficient authentication scopes.")
        if access.account.project_id not in (None, project):
            raise _GoogleError(
                403,
                "PERMISSION_DENIED",
                f"Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist).",
            )

    def _check_recipient(self, token: str, project: str) -> str:
        device = self.registry.resolve(token, Provider.fcm, project_id=project)
        if device is None or device.provider is not Provider.fcm:
            raise FcmError("INVALID_ARGUMENT", "The registration token is not a valid FCM registration token")
        if device.state is not TokenState.valid:
            raise FcmError("UNREGISTERED")
        if device.project_id != project:
            raise FcmError("SENDER_ID_MISMATCH")
        return device.token

    def _deliver(self, token: str, data: Mapping[str, str], ttl_s: float, project: str) -> str:
        device_token = self._check_recipient(token, project)
        now = self.registry.clock()
        push_id = f"0:{int(now * 1000)}%{secrets.token_hex(8)}"
        self.registry.accept_push(device_token, push_id=push_id, payload=dict(data), expires_at=now + ttl_s)
        return push_id


def _parse_message(body: bytes) -> tuple[dict[str, Any], bool]:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise FcmError("INVALID_ARGUMENT", "Invalid JSON payload received.") from None
    message = parsed.get("message") if isinstance(parsed, dict) else None
    if not isinstance(message, dict):
        raise FcmError("INVALID_ARGUMENT", "Request contains an invalid argument.")
    return message, bool(parsed.get("validate_only", False))


def _target_and_data(message: Mapping[str, Any]) -> tuple[str, Mapping[str, str]]:
    token = message.get("token")
    if not isinstance(token, str) or not token:
        raise FcmError("INVALID_ARGUMENT", "Recipient of the message is not set.")
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise FcmError("INVALID_ARGUMENT", "Invalid value at 'message.data': values must be strings")
    if len(json.dumps(message).encode()) > MAX_PAYLOAD:
        raise FcmError("INVALID_ARGUMENT", "Message is too big")
    return token, data


def _ttl_s(message: Mapping[str, Any]) -> float:
    android = message.get("android")
    raw = android.get("ttl") if isinstance(android, dict) else None
    if raw is None:
        return DEFAULT_TTL_S
    if not isinstance(raw, str) or not raw.endswith("s"):
        raise FcmError(
            "INVALID_ARGUMENT", "Invalid value at 'message.android.ttl' (type.googleapis.com/Duration)"
        )
    try:
        return float(raw[:-1])
    except ValueError:
        raise FcmError("INVALID_ARGUMENT", "Invalid value at 'message.android.ttl'") from None


def _fcm_error(error: FcmError) -> Response:
    code, status = ERROR_STATUS.get(error.error_code, (500, "INTERNAL"))
    detail = {"@type": FCM_ERROR_TYPE, "errorCode": error.error_code}
    body = {"error": {"code": code, "message": error.message, "status": status, "details": [detail]}}
    headers: tuple[tuple[str, str], ...] = _JSON
    retry_after_s = error.retry_after_s
    if retry_after_s is None and error.error_code == "QUOTA_EXCEEDED":
        retry_after_s = QUOTA_RETRY_AFTER_S
    if retry_after_s is not None:
        headers = (*headers, ("retry-after", str(retry_after_s)))
    return Response(code, headers, json.dumps(body).encode())


def _google_error(error: _GoogleError) -> Response:
    body = {"error": {"code": error.code, "message": error.message, "status": error.status}}
    return Response(error.code, _JSON, json.dumps(body).encode())
