"""The operator's page, `/ops`: every organization's queues, workers, running rollouts, holds and credentials,
read-only, refreshing itself. Opened with an operator's token (`mdm.ops.view`, which carries no other
permission): the sign-in form exchanges it for a signed, expiring cookie that names the token's id, never
the token, and every request checks that token again (revoked or expired: back to the sign-in).

Server-rendered HTML with its CSS and script served from the package: nothing from another host. Not part of
the OpenAPI document: it is a page, not the JSON API.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import Environment, PackageLoader, select_autoescape

from api.errors import INVALID_TOKEN, ROUTE_NOT_FOUND, envelope
from models.permissions import OPS_VIEW
from models.store.tokens import TokenExpired, TokenRefused, use_token, use_token_id
from models.tables import ApiToken
from models.types import utcnow
from workers.app import App
from workers.overview import Overview, gather_overview

log = logging.getLogger(__name__)

COOKIE = "mdmq_ops"
SALT = "mdmq.ops.session"
MAX_FORM_BYTES = 4_096  # a token and a little more: the sign-in form's body
ASSETS = {"ops.css": "text/css; charset=utf-8", "ops.js": "text/javascript; charset=utf-8"}
# The page loads nothing from another host and runs no inline script; no site may frame it.
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class OpsSessions:
    """Signed, expiring sign-ins: the cookie holds the token's id, signed with a key derived from the secret
    key ring (so that every API process accepts every other's, and a key rotation signs everyone out); with
    no ring (development without a key), a key of this process's own."""

    def __init__(self, app: App) -> None:
        ring = app.key_ring
        if ring is None:
            log.info("the operator's page signs its cookies with a key of this process (no secret key)")
            keys = [secrets.token_bytes(32)]
        else:
            keys = ring.derived_keys(SALT)
        # itsdangerous signs with the last key and accepts each.
        self._serializer = URLSafeTimedSerializer(list(reversed(keys)), salt=SALT)
        self.max_age_s = int(app.settings.ops_session_s)

    def sign(self, token_id: str) -> str:
        return self._serializer.dumps(token_id)

    def token_id(self, cookie: str | None) -> str | None:
        """The token id the cookie names, if its signature holds and it is younger than the session."""
        if not cookie:
            return None
        try:
            value = self._serializer.loads(cookie, max_age=self.max_age_s)
        except BadSignature:  # SignatureExpired included
            return None
        return value if isinstance(value, str) else None


def router(app: App) -> APIRouter:
    sessions = OpsSessions(app)
    templates = Environment(
        loader=PackageLoader("api", "ops_page"), autoescape=select_autoescape(default=True), trim_blocks=True
    )
    templates.filters["ago"] = _ago
    routes = APIRouter(prefix="/ops", include_in_schema=False)

    def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def operator(request: Request) -> ApiToken | None:
        """The signed-in operator's live token, or None (no cookie, a bad or stale one, a revoked token)."""
        token_id = sessions.token_id(request.cookies.get(COOKIE))
        if token_id is None:
            return None
        try:
            with app.session() as session:
                row = use_token_id(session, token_id)
        except TokenRefused:  # expired too
            return None
        return row if OPS_VIEW in row.permissions else None

    def overview() -> Overview:
        with app.session() as session:
            return gather_overview(session, app.broker, now=utcnow())

    @routes.get("")
    def page(request: Request) -> Response:
        if operator(request) is None:
            return _to_sign_in()
        return render("page.html", o=overview(), refresh_s=app.settings.ops_refresh_s)

    @routes.get("/panels")
    def panels(request: Request) -> Response:
        """The page's figures as HTML, which its script swaps in every few seconds."""
        if operator(request) is None:
            return _refused()
        return render("panels.html", o=overview())

    @routes.get("/figures")
    def figures(request: Request) -> Response:
        """The same figures in the JSON envelope (as `mdmq queues --json` prints them)."""
        if operator(request) is None:
            return _refused()
        data = overview().as_json()
        return JSONResponse({"status": True, "data": _plain(data)}, headers=HEADERS)

    @routes.get("/sign-in")
    def sign_in_form() -> Response:
        return render("sign_in.html")

    @routes.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        body = await request.body()
        token = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace")).get("token", [""])[0].strip()
        row, problem = _check(app, token)
        if row is None:
            return render("sign_in.html", status=401 if problem != "permission" else 403, problem=problem)
        response = RedirectResponse("/ops", status_code=303, headers=HEADERS)
        response.set_cookie(
            COOKIE,
            sessions.sign(row.id),
            max_age=sessions.max_age_s,
            path="/ops",
            httponly=True,
            samesite="strict",
            # In production always: behind a proxy that ends TLS the request reaches us as http.
            secure=request.url.scheme == "https" or app.settings.in_production,
        )
        return response

    @routes.post("/sign-out")
    def sign_out() -> Response:
        response = _to_sign_in()
        response.delete_cookie(COOKIE, path="/ops", httponly=True, samesite="strict")
        return response

    @routes.get("/static/{name}")
    def asset(name: str) -> Response:
        if name not in ASSETS:
            return JSONResponse(envelope(ROUTE_NOT_FOUND[1], ROUTE_NOT_FOUND[2]), status_code=404)
        body = resources.files("api").joinpath("ops_page", name).read_bytes()
        return Response(body, media_type=ASSETS[name], headers={"Cache-Control": "max-age=300"})

    return routes


def _check(app: App, token: str) -> tuple[ApiToken | None, str]:
    """The token's row if it opens the page; else None and why: `invalid` (unknown, revoked, malformed),
    `expired`, or `permission` (an organization's token)."""
    if not token or len(token) > 200:
        return None, "invalid"
    try:
        with app.session() as session:
            row = use_token(session, token)
    except TokenExpired:
        return None, "expired"
    except TokenRefused:
        return None, "invalid"
    if OPS_VIEW not in row.permissions:
        log.warning("operator's page refused token %s of %s: no %s", row.id, row.organization_id, OPS_VIEW)
        return None, "permission"
    return row, ""


def _to_sign_in() -> RedirectResponse:
    return RedirectResponse("/ops/sign-in", status_code=303, headers=HEADERS)


def _refused() -> JSONResponse:
    """For the page's script: a 401, upon which it goes to the sign-in."""
    answer = envelope(INVALID_TOKEN[1], f"{INVALID_TOKEN[2]}: sign in at /ops/sign-in")
    return JSONResponse(answer, status_code=401, headers=HEADERS)


def _plain(value: Any) -> Any:
    """Times as the API writes them (ISO 8601, `Z` for UTC), through nested dicts and lists."""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _ago(value: datetime | None, now: datetime) -> str:
    """`value` relative to `now`, in words an operator reads at a glance: 12 s ago, 3 min ago, 2 h ago."""
    if value is None:
        return "never"
    seconds = (now - value).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7_200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3_600:.0f} h ago"
