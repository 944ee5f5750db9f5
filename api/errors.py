"""The API's errors: one JSON envelope, a code from this table, and never an HTML page or a bare `detail`.

| code | HTTP | message |
| --- | --- | --- |
| 3001 | 404 | Entity not found (also: an entity of another organization) |
| 3002 | 404 | Route not found |
| 3003 | 405 | Method not allowed |
| 4000 | 400 | Invalid request: which field, and why |
| 4002 | 401 | No auth token |
| 4003 | 403 | Permission denied: which permission is missing |
| 4004 | 401 | Invalid Token |
| 4005 | 401 | Token expired |
| 4008 | 408 | Request body too slow: the seconds it had |
| 4009 | 409 | Conflict: what the request would undo, and how to go ahead; or an `Idempotency-Key` in use |
| 4013 | 413 | Request body too large: its size, and the most taken |
| 4019 | 409 | Topic change refused: an enrolled Apple device keeps its topic; unenroll, then enroll again |
| 4022 | 422 | Idempotency key reused: the key came first with another request body |
| 5000 | 500 | Internal error |
| 5003 | 503 | Service busy: the key checks (with `Retry-After`), or one API process's connections |
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from config.errors import MdmqError

log = logging.getLogger(__name__)

ENTITY_NOT_FOUND = (404, 3001, "Entity not found")
ROUTE_NOT_FOUND = (404, 3002, "Route not found")
METHOD_NOT_ALLOWED = (405, 3003, "Method not allowed")
INVALID_REQUEST = (400, 4000, "Invalid request")
NO_AUTH_TOKEN = (401, 4002, "No auth token")
PERMISSION_DENIED = (403, 4003, "Permission denied")
INVALID_TOKEN = (401, 4004, "Invalid Token")
EXPIRED_TOKEN = (401, 4005, "Token expired")
BODY_TOO_SLOW = (408, 4008, "Request body too slow")
CONFLICT = (409, 4009, "Conflict")
BODY_TOO_LARGE = (413, 4013, "Request body too large")
TOPIC_CHANGE_REFUSED = (409, 4019, "Topic change refused")
IDEMPOTENCY_KEY_REUSED = (422, 4022, "Idempotency key reused")
INTERNAL_ERROR = (500, 5000, "Internal error")
SERVICE_BUSY = (503, 5003, "Service busy")

CODES = (
    ENTITY_NOT_FOUND, ROUTE_NOT_FOUND, METHOD_NOT_ALLOWED, INVALID_REQUEST, NO_AUTH_TOKEN, PERMISSION_DENIED,
    INVALID_TOKEN, EXPIRED_TOKEN, BODY_TOO_SLOW, CONFLICT, BODY_TOO_LARGE, TOPIC_CHANGE_REFUSED,
    IDEMPOTENCY_KEY_REUSED,
    INTERNAL_ERROR, SERVICE_BUSY,
)  # fmt: skip


class ErrorDetail(BaseModel):
    code: int
    message: str
    pointer: str | None = Field(
        default=None, description="A 400 for a value in the body: where it sits (RFC 6901 JSON pointer)."
    )


class ErrorEnvelope(BaseModel):
    status: bool = False
    error: ErrorDetail


# Documented on every route: what any of them may answer besides its own success.
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorEnvelope, "description": "Invalid request (4000)"},
    401: {
        "model": ErrorEnvelope,
        "description": "No auth token (4002), Invalid Token (4004), Token expired (4005)",
    },
    403: {"model": ErrorEnvelope, "description": "Permission denied (4003)"},
    404: {"model": ErrorEnvelope, "description": "Entity not found (3001)"},
    413: {"model": ErrorEnvelope, "description": "Request body too large (4013)"},
    500: {"model": ErrorEnvelope, "description": "Internal error (5000)"},
}


def without_422(api: FastAPI) -> None:
    """FastAPI documents validation errors as 422 with its own body; this API answers them as 400 in the
    envelope, and its document says so. A 422 of the API's own (4022, in the envelope) stays."""
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            document = generate()
            for path in document.get("paths", {}).values():
                for operation in path.values():
                    responses = operation.get("responses", {})
                    if "HTTPValidationError" in str(responses.get("422", {})):
                        responses.pop("422")
            schemas = document.get("components", {}).get("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            api.openapi_schema = document
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


class ApiError(MdmqError):
    """An answer other than success: its HTTP status, the code of the table above and a message."""

    def __init__(
        self, error: tuple[int, int, str], detail: str | None = None, *, headers: dict[str, str] | None = None
    ) -> None:
        self.http_status, self.code, message = error
        self.message = f"{message}: {detail}" if detail else message
        self.headers = headers or {}
        super().__init__(self.message)


def envelope(code: int, message: str, *, pointer: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if pointer is not None:
        error["pointer"] = pointer
    return {"status": False, "error": error}


def _response(error: ApiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(envelope(error.code, error.message), status_code=error.http_status, headers=headers)


def install(app: FastAPI) -> None:
    """Every error the app can produce, as the envelope."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.http_status == 401 else {}
        return _response(error, headers | error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return _response(ApiError(INVALID_REQUEST, _describe(error)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            return _response(ApiError(ROUTE_NOT_FOUND, request.url.path))
        if error.status_code == 405:  # with Starlette's Allow header: the methods the route has
            return _response(ApiError(METHOD_NOT_ALLOWED, request.method), error.headers)
        code = INVALID_REQUEST[1] if error.status_code < 500 else INTERNAL_ERROR[1]
        return JSONResponse(envelope(code, str(error.detail)), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def crash(request: Request, error: Exception) -> JSONResponse:
        log.exception("API request failed: %s %s", request.method, request.url.path)
        return _response(ApiError(INTERNAL_ERROR))


def _describe(error: RequestValidationError) -> str:
    """The first problem, in words: where, and what was wrong; never the value (it may be a secret)."""
    problems = error.errors()
    if not problems:
        return "malformed"
    first = problems[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body",)) or "request"
    return f"{where}: {first.get('msg', 'invalid')}"
