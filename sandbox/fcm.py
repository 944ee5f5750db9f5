"""The FCM HTTP v1 emulator: `POST /token` (OAuth) and `POST /v1/projects/<p>/messages:send`.

Strict as FCM is: a malformed token is INVALID_ARGUMENT, a token of another project SENDER_ID_MISMATCH, the
data payload is counted as Google counts it, TTL and reserved keys are checked, an unknown path is an HTML
404. Token format is undocumented [F-TOK]; "well-formed" here is the shape real tokens have: base64url
characters, at most one `:` (an instance id, then the token proper), 100 to 4096 characters in all (real
ones are some 150-165: `<22-char instance id>:APA91b<134 chars>`). An APNs token (64 hex) is not one.

Open registration (`mdmq sandbox`): any well-formed token is a live device of the project it is sent to,
except tokens starting with `unregistered` (404 UNREGISTERED) or `mismatch` (403 SENDER_ID_MISMATCH, as a
token of another project), so that the dead-token and held paths can be tried by hand.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from email.utils import formatdate
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
# Injectable by their status word: Google's front end answering alone, in JSON without an FcmError detail.
FRONT_END_ERRORS: Mapping[str, tuple[int, str, str]] = {
    "UNAUTHENTICATED": (401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
    "PERMISSION_DENIED": (403, "PERMISSION_DENIED", "The caller does not have permission"),
    "NOT_FOUND": (404, "NOT_FOUND", "Requested entity was not found."),
}
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
MAX_DATA_BYTES = 4096  # [F-MSG] the data payload, keys and values counted
QUOTA_RETRY_AFTER_S = 60  # [F-QUOTA] senders over quota wait at least a minute
MAX_TTL_S = 2_419_200  # [F-TTL] [F-MSG] four weeks, also the default
DEFAULT_TTL_S = MAX_TTL_S
INVALID_TOKEN_MESSAGE = "The registration token is not a valid FCM registration token"  # noqa: S105
# [F-MSG] reserved data keys, and [F-ERR]'s broader prefixes: the union is refused.
RESERVED_KEYS = frozenset({"from", "notification", "message_type"})
RESERVED_PREFIXES = ("google", "gcm")
# Open registration: tokens that try the refusals by hand (see the module's docstring).
UNREGISTERED_PREFIX = "unregistered"
MISMATCH_PREFIX = "mismatch"
OTHER_PROJECT = "another-firebase-project"
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+(?::[A-Za-z0-9_-]+)?")
_TOKEN_LENGTHS = range(100, 4097)
_DURATION = re.compile(r"(?P<seconds>-?[0-9]+(?:\.[0-9]{1,9})?)s")
_SEND_PATH = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")
_JSON = (("content-type", "application/json; charset=UTF-8"),)
_HTML = (("content-type", "text/html; charset=UTF-8"),)
# Google's front end answers a path it does not serve with an HTML page, not JSON.
_NOT_FOUND_PAGE = (
    b"<!DOCTYPE html>\n<html lang=en><meta charset=utf-8><title>Error 404 (Not Found)!!1</title>"
    b"<p><b>404.</b> <ins>That\xe2\x80\x99s an error.</ins>"
    b"<p>The requested URL was not found on this server. <ins>That\xe2\x80\x99s all we know.</ins>\n"
)


class FcmError(Exception):
    """An FCM refusal: the FcmError detail with its errorCode, and BadRequest field violations if any."""

    def __init__(
        self,
        error_code: str,
        message: str | None = None,
        *,
        retry_after_s: int | None = None,
        field: str | None = None,
    ):
        super().__init__(error_code)
        self.error_code = error_code
        self.message = message or _MESSAGES.get(error_code, "Error.")
        self.retry_after_s = retry_after_s
        self.field = field  # the message field at fault: a google.rpc.BadRequest violation


def _field_error(field: str, description: str) -> FcmError:
    """[F-ERR] [F-CODES] INVALID_ARGUMENT about a field of the message (payload scope, not the token)."""
    return FcmError("INVALID_ARGUMENT", description, field=field)


class _GoogleError(Exception):
    """An error Google's front end answers before FCM looks at the message: no FcmError detail."""

    def __init__(self, code: int, status: str, message: str, *, field: str | None = None) -> None:
        super().__init__(status)
        self.code, self.status, self.message = code, status, message
        self.field = field  # the field Google's parser could not read: a google.rpc.BadRequest violation


def _parse_error(field: str, message: str) -> _GoogleError:
    """[F-ERR] [F-CODES] a field the JSON parser refuses: INVALID_ARGUMENT, a BadRequest violation only."""
    return _GoogleError(400, "INVALID_ARGUMENT", message, field=field)


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
            return Response(404, _HTML, _NOT_FOUND_PAGE)
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
            return Response(400, (*_JSON, self._date()), json.dumps(body).encode())
        body_ok = {"access_token": token, "expires_in": ACCESS_TOKEN_TTL_S, "token_type": "Bearer"}
        return Response(200, (*_JSON, self._date()), json.dumps(body_ok).encode())

    def _date(self) -> tuple[str, str]:
        # Google dates every answer: a client may read its clock's skew from a refused assertion.
        return ("date", formatdate(self.registry.clock(), usegmt=True))

    # -- send ------------------------------------------------------------------------------------

    def _send(self, request: Request, project: str) -> Response:
        self._authorize(request.header("authorization"), project)
        injected = self.faults.pick_error()
        if injected is not None and injected.reason in FRONT_END_ERRORS:
            raise _GoogleError(*FRONT_END_ERRORS[injected.reason])
        if injected is not None:
            raise FcmError(injected.reason, retry_after_s=injected.retry_after_s)
        message, validate_only = _parse_message(request.body)
        token, data = _target_and_data(message)
        ttl_s = _ttl_s(message)
        if validate_only:
            self._check_recipient(token, project)
            push_id = "fake_message_id"
        else:
            push_id = self._deliver(token, data, ttl_s, project)
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
            # [G-CODE] PERMISSION_DENIED whether or not the project exists: Google does not tell a caller
            # without permission that a resource is missing (IAM "Permission error messages": "... (or it
            # may not exist)"). No FcmError detail: the front end answers before FCM.
            raise _GoogleError(
                403,
                "PERMISSION_DENIED",
                f"Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist).",
            )

    def _check_recipient(self, token: str, project: str) -> str:
        if not well_formed(token):
            raise FcmError("INVALID_ARGUMENT", INVALID_TOKEN_MESSAGE)  # [F-CODES] [F-TOK]
        self._open_mode_refusals(token, project)
        device = self.registry.resolve(token, Provider.fcm, project_id=project)
        if device is None or device.provider is not Provider.fcm:
            # Well-formed but never issued: Google says the same as for a malformed one [F-CODES].
            raise FcmError("INVALID_ARGUMENT", INVALID_TOKEN_MESSAGE)
        if device.state is not TokenState.valid:
            raise FcmError("UNREGISTERED")  # [F-ERR] the app instance is gone
        if device.project_id != project:
            raise FcmError("SENDER_ID_MISMATCH")  # [F-ERR] the token is another sender's
        return device.token

    def _open_mode_refusals(self, token: str, project: str) -> None:
        """With open registration, the documented prefixes register their device as refused."""
        if not self.registry.open_registration or self.registry.device(token) is not None:
            return
        if token.startswith(UNREGISTERED_PREFIX):
            self.registry.add_fcm_device(token, project_id=project)
            self.registry.unregister(token)
        elif token.startswith(MISMATCH_PREFIX):
            self.registry.add_fcm_device(token, project_id=OTHER_PROJECT)

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


def well_formed(token: str) -> bool:
    """The shape of a real registration token (the module's docstring says why this one)."""
    return len(token) in _TOKEN_LENGTHS and _TOKEN_SHAPE.fullmatch(token) is not None


def _target_and_data(message: Mapping[str, Any]) -> tuple[str, Mapping[str, str]]:
    token = message.get("token")
    if not isinstance(token, str) or not token:
        raise FcmError("INVALID_ARGUMENT", "Recipient of the message is not set.")
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        # [F-MSG] data is a map of strings: Google's parser refuses anything else, without an FcmError.
        raise _parse_error("message.data", "Invalid value at 'message.data' (TYPE_STRING)")
    _check_data(data)
    return token, data


def _check_data(data: Mapping[str, str]) -> None:
    for key in data:
        if key in RESERVED_KEYS or key.lower().startswith(RESERVED_PREFIXES):
            # [F-MSG] [F-ERR] reserved words may not be data keys
            raise _field_error("message.data", f"Invalid data payload key: {key[:100]}")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
    if size > MAX_DATA_BYTES:  # [F-MSG] keys and values, in bytes
        raise _field_error("message.data", f"Message data is too big: {size} bytes, at most {MAX_DATA_BYTES}")


def _ttl_s(message: Mapping[str, Any]) -> float:
    """[F-TTL] [F-MSG] `android.ttl`: a Duration string ("3.5s"), 0 to four weeks."""
    android = message.get("android")
    raw = android.get("ttl") if isinstance(android, dict) else None
    if raw is None:
        return DEFAULT_TTL_S
    match = _DURATION.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        raise _parse_error(
            "message.android.ttl",
            "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
        )
    seconds = float(match["seconds"])
    if not 0 <= seconds <= MAX_TTL_S:
        raise _field_error("message.android.ttl", f"TTL must be between 0 and {MAX_TTL_S} seconds")
    return seconds


def _fcm_error(error: FcmError) -> Response:
    code, status = ERROR_STATUS.get(error.error_code, (500, "INTERNAL"))
    details: list[dict[str, Any]] = [{"@type": FCM_ERROR_TYPE, "errorCode": error.error_code}]
    if error.field is not None:
        violation = {"field": error.field, "description": error.message}
        details.append({"@type": BAD_REQUEST_TYPE, "fieldViolations": [violation]})
    body = {"error": {"code": code, "message": error.message, "status": status, "details": details}}
    headers: tuple[tuple[str, str], ...] = _JSON
    retry_after_s = error.retry_after_s
    if retry_after_s is None and error.error_code == "QUOTA_EXCEEDED":
        retry_after_s = QUOTA_RETRY_AFTER_S
    if retry_after_s is not None:
        headers = (*headers, ("retry-after", str(retry_after_s)))
    return Response(code, headers, json.dumps(body).encode())


def _google_error(error: _GoogleError) -> Response:
    body: dict[str, Any] = {"code": error.code, "message": error.message, "status": error.status}
    if error.field is not None:
        violation = {"field": error.field, "description": error.message}
        body["details"] = [{"@type": BAD_REQUEST_TYPE, "fieldViolations": [violation]}]
    return Response(error.code, _JSON, json.dumps({"error": body}).encode())
