"""API tokens, tried against the real API on PostgreSQL: they expire (401 4005), a revoked one is refused on
the very next request by every API process, their last use is kept to the minute, their permissions come
from the closed set the routes require, `mdmq token list` never shows a secret, an unknown organization is
created only on request, and a token older than expiries gets one from the upgrade and a warning on each
use."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from config.settings import Settings
from models.migrations.runner import upgrade
from models.permissions import OPS_VIEW, PERMISSIONS
from models.store import ensure_organization
from models.store.tokens import (
    DEFAULT_LIFETIME,
    UnknownPermission,
    create_token,
    get_token,
    list_tokens,
    token_hash,
)
from models.tables import ApiToken, Organization
from models.types import utcnow
from tests.integration.api.conftest import Client, serving
from tests.integration.security.conftest import Cli
from tests.services import new_postgres_database
from workers.app import App

API = Path(__file__).resolve().parents[3] / "api"
DEPLOYMENTS = "/v1/organizations/acme/deployments"


def new_token(
    mdmq: App, *, org: str = "acme", permissions: tuple[str, ...] = ("mdm.deployment.get",), **kw: Any
) -> tuple[str, str]:
    with mdmq.session() as s:
        ensure_organization(s, organization_id=org)
        row, secret = create_token(s, organization_id=org, permissions=list(permissions), **kw)
    return row.id, secret


def get(client: Client, token: str, path: str = DEPLOYMENTS) -> tuple[int, dict[str, Any]]:
    answer = client.get(path, headers={"Authorization": f"Bearer {token}"})
    return answer.status_code, answer.json()


def token_row(mdmq: App, token_id: str) -> ApiToken:
    with mdmq.session() as s:
        row = get_token(s, token_id=token_id)
    assert row is not None
    return row


@contextmanager
def served(app: App) -> Iterator[Client]:
    """Another API process on the same database: its own engine, its own pool."""
    with serving(app) as base_url:
        client = Client(base_url, metrics_url="")  # its metrics are not read here
        try:
            yield client
        finally:
            client.http.close()


def test_the_closed_set_is_exactly_what_the_routes_require() -> None:
    required = {
        name
        for path in API.glob("*.py")
        for name in re.findall(r"require\(\w+, \"([a-z.]+)\"\)", path.read_text())
    }
    # The operator's page checks its own, which is no organization's (api/ops.py).
    if "OPS_VIEW in row.permissions" in (API / "ops.py").read_text():
        required.add(OPS_VIEW)

    assert required == PERMISSIONS


def test_an_expired_token_is_401_with_its_own_code_and_an_unknown_one_stays_4004(
    client: Client, mdmq: App
) -> None:
    _, expired = new_token(mdmq, lifetime=timedelta(days=1), now=utcnow() - timedelta(days=1, seconds=1))

    code, body = get(client, expired)

    assert (code, body["error"]["code"]) == (401, 4005)
    assert body["error"]["message"].startswith("Token expired")
    assert expired not in json.dumps(body)
    assert get(client, "mdmq_never-issued")[1]["error"] == {"code": 4004, "message": "Invalid Token"}


def test_a_revoked_token_is_refused_by_every_api_process_on_its_next_request(
    client: Client, mdmq: App, cli: Cli, postgres_url: str
) -> None:
    token_id, token = new_token(mdmq)
    second_app = App(Settings(database_url=postgres_url, broker_url="stub://"))
    try:
        with served(second_app) as second:
            assert get(client, token)[0] == get(second, token)[0] == 200, "warm: both have used it"

            revoked = cli("token", "revoke", token_id)

            assert revoked.exit_code == 0, revoked.output
            for api in (client, second):
                assert get(api, token) == (
                    401,
                    {"status": False, "error": {"code": 4004, "message": "Invalid Token"}},
                )
    finally:
        second_app.close()
    assert token_row(mdmq, token_id).revoked_at is not None
    again = cli("token", "revoke", token_id)
    assert (again.exit_code, "already revoked" in again.stderr) == (1, True)
    assert cli("token", "revoke", "0" * 24).exit_code == 1, "no such token"
    assert cli("token", "revoke", "not-an-id").exit_code == 64


def test_the_last_use_is_kept_to_the_minute_not_written_on_every_request(client: Client, mdmq: App) -> None:
    token_id, token = new_token(mdmq)
    assert token_row(mdmq, token_id).last_used_at is None
    before = utcnow()

    assert get(client, token)[0] == 200
    first = token_row(mdmq, token_id).last_used_at
    assert first is not None
    assert before <= first <= utcnow()
    assert get(client, token)[0] == 200
    assert token_row(mdmq, token_id).last_used_at == first, "within the minute: no write"

    with mdmq.session() as s:
        row = s.get(ApiToken, token_id)
        assert row is not None
        row.last_used_at = first - timedelta(minutes=2)
    assert get(client, token)[0] == 200
    later = token_row(mdmq, token_id).last_used_at
    assert later is not None
    assert later >= first


def test_create_expires_in_90_days_by_default_or_as_asked_and_prints_the_token_last(
    cli: Cli, mdmq: App, client: Client
) -> None:
    with mdmq.session() as s:
        ensure_organization(s, organization_id="acme")
    before = utcnow()

    default = cli("token", "create", "--org", "acme", "--permission", "mdm.deployment.get")
    short = cli(
        "token", "create", "--org", "acme", "--permission", "mdm.device.report", "--expires-in", "30d",
        "--json",
    )  # fmt: skip

    assert default.exit_code == 0, default.output
    token = default.stdout.strip().splitlines()[-1]
    assert token.startswith("mdmq_")
    assert get(client, token)[0] == 200
    assert short.exit_code == 0, short.output
    made = json.loads(short.stdout)
    with mdmq.session() as s:
        rows = {row.id: row for row in list_tokens(s, organization_id="acme")}
    assert token_hash(token) in {row.token_hash for row in rows.values()}, "only the hash is stored"
    assert all(token not in row.token_hash for row in rows.values())
    expiries = sorted(row.expires_at - before for row in rows.values() if row.expires_at)
    assert timedelta(days=30) <= expiries[0] < timedelta(days=30, minutes=1)
    assert DEFAULT_LIFETIME <= expiries[1] < DEFAULT_LIFETIME + timedelta(minutes=1)
    assert made["permissions"] == ["mdm.device.report"]
    assert made["token"].startswith("mdmq_")
    for wrong in ("30x", "0d", "367d", "never"):
        refused = cli(
            "token", "create", "--org", "acme", "--permission", "mdm.device.report", "--expires-in", wrong
        )
        assert refused.exit_code == 64, wrong


def test_list_shows_every_token_and_never_a_secret(cli: Cli, mdmq: App, client: Client) -> None:
    live_id, live = new_token(mdmq)
    _, expired = new_token(mdmq, lifetime=timedelta(hours=1), now=utcnow() - timedelta(hours=2))
    created = cli(
        "token", "create", "--org", "other-org", "--create-org", "--permission", "mdm.device.report"
    )
    revoked = created.stdout.strip().splitlines()[-1]
    revoked_id = next(row.id for row in _all(mdmq) if row.token_hash == token_hash(revoked))
    assert cli("token", "revoke", revoked_id).exit_code == 0
    assert get(client, live)[0] == 200

    table = cli("token", "list")
    listed = cli("token", "list", "--json")
    only_acme = cli("token", "list", "--org", "acme", "--json")

    assert table.exit_code == listed.exit_code == 0, table.output
    for output in (table.output, listed.output, only_acme.output):
        for secret in (live, expired, revoked):
            assert secret not in output
            assert token_hash(secret) not in output
    tokens = {t["id"]: t for t in json.loads(listed.stdout)["tokens"]}
    assert set(next(iter(tokens.values()))) == {
        "id", "organizationId", "permissions", "createdAt", "expiresAt", "lastUsedAt", "revokedAt", "legacy"
    }  # fmt: skip
    assert tokens[live_id]["lastUsedAt"] is not None
    assert tokens[live_id]["revokedAt"] is None
    assert tokens[revoked_id]["revokedAt"] is not None
    assert tokens[revoked_id]["organizationId"] == "other-org"
    assert len(tokens) == 3
    assert {t["organizationId"] for t in json.loads(only_acme.stdout)["tokens"]} == {"acme"}
    assert "(expired)" in table.stdout


def _all(mdmq: App) -> list[ApiToken]:
    with mdmq.session() as s:
        return list_tokens(s)


def test_an_unknown_permission_is_refused_with_the_valid_ones(cli: Cli, mdmq: App) -> None:
    with mdmq.session() as s:
        ensure_organization(s, organization_id="acme")

    for wrong in ("*", "mdm.device.delete", "MDM.DEPLOYMENT.GET"):
        result = cli(
            "token", "create", "--org", "acme", "--permission", "mdm.deployment.get", "--permission", wrong
        )

        assert result.exit_code == 64, result.output
        assert f"unknown permission(s): {wrong}" in result.stderr
        assert all(name in result.stderr for name in PERMISSIONS)
    assert _all(mdmq) == [], "nothing created"
    with pytest.raises(UnknownPermission), mdmq.session() as s:
        create_token(s, organization_id="acme", permissions=["*"])


def test_an_unknown_organization_is_refused_unless_create_org(cli: Cli, mdmq: App) -> None:
    refused = cli("token", "create", "--org", "acme-typo", "--permission", "mdm.deployment.get")

    assert refused.exit_code == 1
    assert "no organization acme-typo" in refused.stderr
    assert "--create-org" in refused.stderr
    assert refused.stdout == ""
    with mdmq.session() as s:
        assert s.get(Organization, "acme-typo") is None, "no organization created"
    assert _all(mdmq) == []

    created = cli(
        "token", "create", "--org", "acme-typo", "--create-org", "--permission", "mdm.deployment.get"
    )

    assert created.exit_code == 0, created.output
    with mdmq.session() as s:
        assert s.get(Organization, "acme-typo") is not None
    assert [row.organization_id for row in _all(mdmq)] == ["acme-typo"]


LEGACY_SECRET = "mdmq_created-before-tokens-expired"


@pytest.fixture
def legacy_database() -> Iterator[str]:
    """A database at revision 0008 holding a token, as the release before expiries left it; then upgraded."""
    with new_postgres_database("mdmq_legacy_token") as url:
        upgrade(url, "0008")
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.execute(
                sa.text("INSERT INTO organization (id, name, created_at) VALUES ('acme', 'acme', now())")
            )
            connection.execute(
                sa.text(
                    "INSERT INTO api_token (id, organization_id, token_hash, permissions, created_at) "
                    "VALUES (:id, 'acme', :hash, '[\"mdm.deployment.get\"]', now() - interval '400 days')"
                ),
                {"id": "a" * 24, "hash": token_hash(LEGACY_SECRET)},
            )
        engine.dispose()
        upgrade(url)
        yield url


def _back_fill_again(url: str) -> None:
    path = next((Path(upgrade.__code__.co_filename).parent / "versions").glob("*_0009_*.py"))
    spec = importlib.util.spec_from_file_location("migration_0009", path)
    assert spec is not None
    assert spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(migration.back_fill(utcnow() + timedelta(days=30)))
    engine.dispose()


def test_a_token_from_before_expiries_gets_90_days_from_the_upgrade_and_a_warning_on_each_use(
    legacy_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(Settings(database_url=legacy_database, broker_url="stub://"))
    try:
        row = token_row(app, "a" * 24)
        _back_fill_again(legacy_database)
        again = token_row(app, "a" * 24)
        assert (again.expires_at, again.legacy) == (row.expires_at, True), (
            "a second back-fill changes nothing"
        )
        assert row.legacy is True
        assert row.expires_at is not None
        assert DEFAULT_LIFETIME - timedelta(minutes=5) <= row.expires_at - utcnow() <= DEFAULT_LIFETIME
        _, fresh = new_token(app)
        with caplog.at_level(logging.WARNING, logger="api.auth"), served(app) as api:
            assert get(api, LEGACY_SECRET)[0] == 200
            assert get(api, LEGACY_SECRET)[0] == 200
            assert get(api, fresh)[0] == 200
    finally:
        app.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "api.auth"]
    assert len(warnings) == 2, "each use of the legacy token, not the new one"
    assert all("a" * 24 in w and "created before tokens expired" in w for w in warnings)
    assert all(f"{row.expires_at:%Y-%m-%d}" in w for w in warnings)
    assert not any(LEGACY_SECRET in w or token_hash(LEGACY_SECRET) in w for w in caplog.text.splitlines())


def test_a_token_the_previous_release_writes_during_the_rollout_expires_from_its_creation(
    client: Client, mdmq: App, caplog: pytest.LogCaptureFixture
) -> None:
    fresh_id, fresh = new_token(mdmq)
    old_id, old = new_token(mdmq, now=utcnow() - DEFAULT_LIFETIME - timedelta(seconds=1))
    with mdmq.session() as s:
        for token_id in (fresh_id, old_id):  # as the release before expiries inserts it: no expiry
            row = s.get(ApiToken, token_id)
            assert row is not None
            row.expires_at = None

    with caplog.at_level(logging.WARNING, logger="api.auth"):
        assert get(client, fresh)[0] == 200
    assert get(client, old)[1]["error"]["code"] == 4005

    warned = [r.name for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == ["api.auth"], "a legacy token: warned"
