"""The operator's page's sign-in: only an operator's token (mdm.ops.view, alone) opens it, for a signed,
expiring cookie that names the token's id; every request checks the token again; sign-out ends it."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from config.settings import Settings
from models.secrets import KeyRing
from models.store import ensure_organization
from models.store.tokens import TOKEN, MixedPermissions, create_token, revoke_token
from models.types import utcnow
from tests.integration.api.conftest import Client, serving
from workers.app import App


def _token(pg: Engine, org: str, *permissions: str) -> tuple[str, str]:
    with Session(pg) as s, s.begin():
        ensure_organization(s, organization_id=org)
        row, token = create_token(s, organization_id=org, permissions=list(permissions))
        return row.id, token


def _sign_in(client: Client, token: str) -> requests.Response:
    return client.http.post(
        client.base_url + "/ops/sign-in", data={"token": token}, allow_redirects=False, timeout=30
    )


def test_an_operator_signs_in_sees_the_figures_and_signs_out(client: Client, pg: Engine) -> None:
    _, token = _token(pg, "operators", "mdm.ops.view")
    assert client.get("/ops", allow_redirects=False).headers["location"] == "/ops/sign-in"

    answer = _sign_in(client, token)

    assert answer.status_code == 303
    assert answer.headers["location"] == "/ops"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/ops" in cookie
    assert "Secure" not in cookie, "served over plain HTTP here"
    assert token not in cookie, "the cookie names the token's id, never the token"
    page = client.get("/ops")
    assert page.status_code == 200
    assert "Queues" in page.text
    assert "Content-Security-Policy" in page.headers
    assert page.headers["Cache-Control"] == "no-store"
    figures = client.get("/ops/figures").json()
    assert figures["status"] is True
    assert [q["queue"] for q in figures["data"]["queues"]] == ["urgent", "paced", "bulk"]

    out = client.http.post(client.base_url + "/ops/sign-out", allow_redirects=False, timeout=30)
    assert out.headers["location"] == "/ops/sign-in"
    assert client.get("/ops", allow_redirects=False).status_code == 303
    assert client.get("/ops/panels").status_code == 401


@pytest.mark.parametrize(
    ("token_of", "status", "said"),
    [
        ("organization", 403, "no <code>mdm.ops.view</code> permission"),
        ("unknown", 401, "Invalid token"),
        ("empty", 401, "Invalid token"),
    ],
)
def test_no_organization_token_and_no_unknown_token_opens_the_page(
    client: Client, pg: Engine, token_of: str, status: int, said: str
) -> None:
    _, organization_token = _token(pg, "acme", "mdm.deployment.get", "mdm.credential.manage", "mdm.audit.get")
    token = {"organization": organization_token, "unknown": "mdmq_" + "x" * 43, "empty": ""}[token_of]

    answer = _sign_in(client, token)

    assert answer.status_code == status
    assert said in answer.text
    assert "set-cookie" not in answer.headers
    assert client.get("/ops/figures").status_code == 401


def test_a_revoked_token_signs_the_page_out_at_its_next_request(client: Client, pg: Engine) -> None:
    token_id, token = _token(pg, "operators", "mdm.ops.view")
    assert _sign_in(client, token).status_code == 303
    assert client.get("/ops/panels").status_code == 200

    with Session(pg) as s, s.begin():
        revoke_token(s, token_id=token_id)

    assert client.get("/ops/panels").status_code == 401
    assert client.get("/ops", allow_redirects=False).headers["location"] == "/ops/sign-in"


def test_a_token_that_expires_signs_the_page_out_at_its_next_request(client: Client, pg: Engine) -> None:
    token_id, token = _token(pg, "operators", "mdm.ops.view")
    assert _sign_in(client, token).status_code == 303
    assert client.get("/ops/panels").status_code == 200

    with pg.begin() as connection:  # its expiry passes
        expired = (
            sa.update(TOKEN).where(TOKEN.c.id == token_id).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        connection.execute(expired)

    assert client.get("/ops/panels").status_code == 401
    assert "expired" in _sign_in(client, token).text


def test_a_forged_or_foreign_cookie_opens_nothing(client: Client, pg: Engine) -> None:
    token_id, token = _token(pg, "operators", "mdm.ops.view")
    assert _sign_in(client, token).status_code == 303
    signed = client.http.cookies.get("mdmq_ops")
    assert signed is not None
    client.http.cookies.clear()

    # The id of a live operator's token, unsigned, or signed by another key: refused.
    for cookie in (token_id, signed[:-2] + ("AA" if not signed.endswith("AA") else "BB")):
        answer = client.get("/ops/panels", cookies={"mdmq_ops": cookie})
        assert answer.status_code == 401


def test_an_operators_token_carries_no_other_permission(pg: Engine) -> None:
    with Session(pg) as s:
        ensure_organization(s, organization_id="operators")
        with pytest.raises(MixedPermissions):
            create_token(s, organization_id="operators", permissions=["mdm.ops.view", "mdm.deployment.get"])


def test_in_production_the_cookie_is_secure_though_a_proxy_that_ended_tls_forwards_http(
    pg: Engine, postgres_url: str
) -> None:
    _, token = _token(pg, "operators", "mdm.ops.view")
    settings = Settings(
        database_url=postgres_url,
        broker_url="stub://",
        environment="production",
        secret_key=KeyRing.generate_key(),
    )
    app = App(settings)
    try:
        with serving(app) as base_url:
            answer = requests.post(
                base_url + "/ops/sign-in", data={"token": token}, allow_redirects=False, timeout=30
            )
    finally:
        app.close()
    assert answer.status_code == 303
    assert "Secure" in answer.headers["set-cookie"]
