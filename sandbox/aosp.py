"""A Pushy-compatible push provider for AOSP devices: `POST /push` and `GET /pushes/{id}` with an api_key.

A token the registry does not know is listed in the answer's `info.failed`; when none is known, the send is
refused with NO_RECIPIENTS [P-SEND]. The status of a push never made, of another key, or no longer tracked
(`forget`) is 404 INVALID_PUSH_ID [P-STAT] (the status is not in the pages read: providers.md §5). Pushes are
otherwise kept for the emulator's lifetime, so a push past its expiration still answers its status.

Open registration (`mdmq sandbox`): any token is a live device, except tokens starting with `failed`, which
are listed as failed, so that the dead-token path can be tried by hand.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from sandbox.faults import FaultRuntime
from sandbox.http2 import Request, Response
from sandbox.registry import DeviceRegistry, Provider, TokenState

DEFAULT_TTL_S = 30 * 86_400
MAX_TTL_S = 365 * 86_400
MAX_PAYLOAD = 4096
MAX_RECIPIENTS = 100_000
MAX_PENDING_LISTED = 1000  # [P-STAT] at most this many pending devices listed
FAILED_PREFIX = "failed"  # open registration: such a token is unknown to the service
_PUSH_STATUS_PATH = re.compile(r"^/pushes/(?P<push_id>[^/]+)$")
_JSON = (("content-type", "application/json; charset=utf-8"),)

# Pushy's error codes with their HTTP status.
ERROR_STATUS: Mapping[str, int] = {
    "MISSING_API_KEY": 401,
    "INVALID_API_KEY": 401,
    "INVALID_PARAM": 400,
    "NO_RECIPIENTS": 400,
    "PAYLOAD_LIMIT_EXCEEDED": 413,
    "INVALID_PUSH_ID": 404,  # docs/providers.md §5: the status is undocumented
    "NOT_FOUND": 404,
    "RATE_LIMIT_EXCEEDED": 429,
    "INTERNAL_SERVER_ERROR": 500,
    "SERVICE_UNAVAILABLE": 503,
}
_MESSAGES: Mapping[str, str] = {
    "MISSING_API_KEY": "Please provide your Secret API Key in the api_key query parameter.",
    "INVALID_API_KEY": "The Secret API Key provided is invalid.",
    "NO_RECIPIENTS": "None of the specified devices are registered.",
    "PAYLOAD_LIMIT_EXCEEDED": "The payload data exceeds the 4kb limit.",
    "INVALID_PUSH_ID": "The push notification ID provided is invalid.",
    "NOT_FOUND": "The requested API endpoint does not exist.",
    "RATE_LIMIT_EXCEEDED": "You have exceeded the API rate limit.",
    "INTERNAL_SERVER_ERROR": "An internal server error occurred.",
    "SERVICE_UNAVAILABLE": "The service is temporarily unavailable.",
}


class PushyError(Exception):
    def __init__(self, code: str, message: str | None = None, *, retry_after_s: int | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message or _MESSAGES.get(code, "Invalid request.")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class _Push:
    push_id: str
    api_key: str
    date: int
    payload: Mapping[str, Any]
    expiration: int


class AospEmulator:
    def __init__(self, registry: DeviceRegistry, faults: FaultRuntime) -> None:
        self.registry = registry
        self.faults = faults
        self._pushes: dict[str, _Push] = {}

    def __call__(self, request: Request) -> Response:
        path, _, query = request.path.partition("?")
        try:
            api_key = self._authorize(parse_qs(query).get("api_key", [""])[0])
            injected = self.faults.pick_error()
            if injected is not None:
                raise PushyError(injected.reason, retry_after_s=injected.retry_after_s)
            return self._route(request, path, api_key)
        except PushyError as error:
            return _error(error)

    def _authorize(self, api_key: str) -> str:
        if not api_key:
            raise PushyError("MISSING_API_KEY")
        if not self.registry.knows_aosp_api_key(api_key):
            raise PushyError("INVALID_API_KEY")
        return api_key

    def _route(self, request: Request, path: str, api_key: str) -> Response:
        if path == "/push" and request.method == "POST":
            return self._send(request.body, api_key)
        match = _PUSH_STATUS_PATH.match(path)
        if match is not None and request.method == "GET":
            return self._status(match["push_id"], api_key)
        raise PushyError("NOT_FOUND")

    # -- send ------------------------------------------------------------------------------------

    def _send(self, body: bytes, api_key: str) -> Response:
        request = _parse_object(body)
        tokens = _recipients(request)
        data = request.get("data")
        if not isinstance(data, dict):
            raise PushyError("INVALID_PARAM", "Please provide the data parameter as a JSON object.")
        if len(json.dumps(data).encode()) > MAX_PAYLOAD:
            raise PushyError("PAYLOAD_LIMIT_EXCEEDED")
        ttl_s = _time_to_live(request)
        known = [t for t in tokens if self._is_registered(t)]
        if not known:
            raise PushyError("NO_RECIPIENTS")
        push = self._record(api_key, data, ttl_s)
        for token in known:
            self.registry.accept_push(token, push_id=push.push_id, payload=data, expires_at=push.expiration)
        info: dict[str, Any] = {"devices": len(known)}
        failed = [t for t in tokens if t not in set(known)]
        if failed:
            info["failed"] = failed
        return _ok({"success": True, "id": push.push_id, "info": info})

    def forget(self, push_id: str) -> None:
        """Stop tracking a push, as the service does once it expired or reached every device [P-STAT]."""
        self._pushes.pop(push_id, None)

    def _is_registered(self, token: str) -> bool:
        open_failed = self.registry.open_registration and token.startswith(FAILED_PREFIX)
        if open_failed and self.registry.device(token) is None:
            return False
        device = self.registry.resolve(token, Provider.aosp)
        return device is not None and device.provider is Provider.aosp and device.state is TokenState.valid

    def _record(self, api_key: str, data: Mapping[str, Any], ttl_s: int) -> _Push:
        now = int(self.registry.clock())
        push = _Push(secrets.token_hex(12), api_key, now, data, now + ttl_s)
        self._pushes[push.push_id] = push
        return push

    # -- status ----------------------------------------------------------------------------------

    def _status(self, push_id: str, api_key: str) -> Response:
        push = self._pushes.get(push_id)
        if push is None or push.api_key != api_key:
            raise PushyError("INVALID_PUSH_ID")
        pending = self.registry.pending_devices(push_id)[:MAX_PENDING_LISTED]
        body = {
            "push": {
                "date": push.date,
                "payload": push.payload,
                "expiration": push.expiration,
                "pending_devices": pending,
            }
        }
        return _ok(body)


def _parse_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise PushyError("INVALID_PARAM", "Please provide the request body as JSON.") from None
    if not isinstance(parsed, dict):
        raise PushyError("INVALID_PARAM", "Please provide the request body as a JSON object.")
    return parsed


def _recipients(request: Mapping[str, Any]) -> list[str]:
    # Pushy also accepts `tokens` and `registration_ids` for `to`.
    raw = request.get("to", request.get("tokens", request.get("registration_ids")))
    tokens = [raw] if isinstance(raw, str) else raw
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise PushyError(
            "INVALID_PARAM", "Please provide a device token or an array of device tokens in 'to'."
        )
    if len(tokens) > MAX_RECIPIENTS:
        raise PushyError("INVALID_PARAM", "The number of device tokens cannot exceed 100,000.")
    return list(dict.fromkeys(tokens))


def _time_to_live(request: Mapping[str, Any]) -> int:
    ttl = request.get("time_to_live", DEFAULT_TTL_S)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL_S:
        raise PushyError("INVALID_PARAM", "Please provide time_to_live as a positive integer up to 1 year.")
    return ttl


def _ok(body: Mapping[str, Any]) -> Response:
    return Response(200, _JSON, json.dumps(body).encode())


def _error(error: PushyError) -> Response:
    body = {"code": error.code, "error": error.message}
    headers: tuple[tuple[str, str], ...] = _JSON
    if error.retry_after_s is not None:
        headers = (*headers, ("retry-after", str(error.retry_after_s)))
    return Response(ERROR_STATUS.get(error.code, 400), headers, json.dumps(body).encode())
