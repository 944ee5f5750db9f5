"""The AOSP push-status route, exactly as documented: every answer with its status code and JSON body, on
PostgreSQL, through the ASGI app."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlmodel import select

from models.enums import Platform, Provider
from models.ids import new_id
from models.statuses import Kind
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.tokens import create_token
from models.tables import ApiToken, Deployment, PushReceipt
from tests.helpers import run_mdmq, scraped
from tests.integration.api.conftest import Client
from workers.app import App

PERMISSION = "mdm.aosp.command.get"
SENT = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
EXPIRES = datetime(2026, 12, 23, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
def world(mdmq: App) -> dict[str, str]:
    """acme: an AOSP device with three commands (pending, delivered, not pushed yet) and an iPhone with one;
    tokens for acme with and without the permission, and one for another organization."""
    names: dict[str, str] = {}
    with mdmq.session() as s:
        for org in ("acme", "other-org"):
            ensure_organization(s, organization_id=org)
        aosp, iphone = add_devices(
            s,
            organization_id="acme",
            devices=[NewDevice(Platform.aosp, "a" * 22), NewDevice(Platform.ios, "b" * 64, push_magic="m")],
        )
        pending, delivered, unsent, apple = create_deployments(
            s,
            organization_id="acme",
            deployments=[
                NewDeployment(aosp, Kind.message),
                NewDeployment(aosp, Kind.message),
                NewDeployment(aosp, Kind.message),
                NewDeployment(iphone, Kind.profile),
            ],
        )
        for deployment_id, pending_devices in ((pending, 1), (delivered, 0)):
            receipt = PushReceipt(
                organization_id="acme",
                provider=Provider.aosp,
                provider_push_id=new_id(),
                sent_at=SENT,
                expires_at=EXPIRES,
                delivered=pending_devices == 0,
                pending_devices=pending_devices,
            )
            s.add(receipt)
            s.flush()
            row = s.get(Deployment, deployment_id)
            assert row is not None
            row.receipt_id = receipt.id
        names |= {"aosp": aosp, "iphone": iphone, "pending": pending, "delivered": delivered}
        names |= {"unsent": unsent, "apple": apple}
        names["token"] = create_token(s, organization_id="acme", permissions=[PERMISSION])[1]
        names["no_permission"] = create_token(s, organization_id="acme", permissions=["mdm.deployment.get"])[
            1
        ]
        names["other_org"] = create_token(s, organization_id="other-org", permissions=[PERMISSION])[1]
    return names


def url(device: str, command: str, organization: str = "acme") -> str:
    path = f"/mdm/aosp/enterprise/devices/{device}/commands/{command}/push-status"
    return f"/v1/organizations/{organization}{path}"


def get(client: Client, path: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = client.get(path, headers=headers)
    assert response.headers["content-type"] == "application/json"
    return response.status_code, response.json()


def error(code: int, message: str) -> dict[str, Any]:
    return {"status": False, "error": {"code": code, "message": message}}


def test_a_pending_push(client: Client, world: dict[str, str]) -> None:
    assert get(client, url(world["aosp"], world["pending"]), world["token"]) == (
        200,
        {
            "status": True,
            "data": {
                "delivered": False,
                "pendingDevices": 1,
                "expiresAt": "2026-12-23T10:00:00Z",
                "sentAt": "2026-11-23T10:00:00Z",
            },
        },
    )


def test_a_delivered_push(client: Client, world: dict[str, str]) -> None:
    status, body = get(client, url(world["aosp"], world["delivered"]), world["token"])
    assert (status, body["data"]["delivered"], body["data"]["pendingDevices"]) == (200, True, 0)


def test_a_command_not_pushed_yet_has_no_status_yet(client: Client, world: dict[str, str]) -> None:
    assert get(client, url(world["aosp"], world["unsent"]), world["token"]) == (
        200,
        {"status": True, "data": {}},
    )


def test_no_token(client: Client, world: dict[str, str]) -> None:
    assert get(client, url(world["aosp"], world["pending"]), None) == (401, error(4002, "No auth token"))


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        ("Bearer mdmq_not-a-token", error(4004, "Invalid Token")),
        ("Bearer ", error(4002, "No auth token")),
        ("Basic dXNlcjpwYXNz", error(4002, "No auth token")),
    ],
)
def test_a_wrong_token(
    client: Client, world: dict[str, str], authorization: str, expected: dict[str, Any]
) -> None:
    response = client.get(url(world["aosp"], world["pending"]), headers={"Authorization": authorization})
    assert (response.status_code, response.json()) == (401, expected)
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_revoked_token(client: Client, mdmq: App, world: dict[str, str]) -> None:
    with mdmq.session() as s:
        for row in s.exec(select(ApiToken)):
            row.revoked_at = SENT
    assert get(client, url(world["aosp"], world["pending"]), world["token"]) == (
        401,
        error(4004, "Invalid Token"),
    )


def test_a_token_of_another_organization_finds_nothing(client: Client, world: dict[str, str]) -> None:
    assert get(client, url(world["aosp"], world["pending"]), world["other_org"]) == (
        404,
        error(3001, "Entity not found"),
    )


def test_a_token_without_the_permission(client: Client, world: dict[str, str]) -> None:
    assert get(client, url(world["aosp"], world["pending"]), world["no_permission"]) == (
        403,
        error(4003, f"Permission denied: {PERMISSION}"),
    )


@pytest.mark.parametrize(
    ("device", "command", "organization", "field"),
    [
        ("xyz", "0" * 24, "acme", "aosDeviceId"),
        ("0" * 24, "0" * 23 + "g", "acme", "aosCommandId"),
        ("0" * 24, "0" * 24, "a!", "organizationId"),
    ],
)
def test_a_malformed_id(
    client: Client, world: dict[str, str], device: str, command: str, organization: str, field: str
) -> None:
    status, body = get(client, url(device, command, organization), world["token"])
    assert status == 400
    assert body["status"] is False
    assert body["error"]["code"] == 4000
    assert body["error"]["message"].startswith(f"Invalid request: path.{field}: String should match pattern")


@pytest.mark.parametrize("which", ["unknown command", "unknown device", "another device", "an iPhone"])
def test_an_unknown_or_unfitting_id(client: Client, world: dict[str, str], which: str) -> None:
    device, command = {
        "unknown command": (world["aosp"], new_id()),
        "unknown device": (new_id(), world["pending"]),
        "another device": (world["iphone"], world["pending"]),
        "an iPhone": (world["iphone"], world["apple"]),
    }[which]
    assert get(client, url(device, command), world["token"]) == (404, error(3001, "Entity not found"))


def test_an_unknown_route_and_method_answer_in_the_envelope(client: Client, world: dict[str, str]) -> None:
    assert get(client, "/v1/nothing-here", world["token"]) == (
        404,
        error(3002, "Route not found: /v1/nothing-here"),
    )
    response = client.delete(url(world["aosp"], world["pending"]))
    assert (response.status_code, response.json()) == (405, error(3003, "Method not allowed: DELETE"))


def test_health_readiness_and_metrics(client: Client) -> None:
    assert client.get("/healthz").json() == {"status": True, "data": {"process": "up"}}
    assert client.get("/readyz").json() == {"status": True, "data": {"database": "up", "broker": "up"}}
    metrics = client.http.get(client.metrics_url, timeout=30)
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE mdmq_transitions_total counter" in metrics.text


def test_mdmq_token_create_prints_a_token_that_works_and_stores_only_its_hash(
    client: Client, mdmq: App, postgres_url: str, world: dict[str, str]
) -> None:
    result = run_mdmq(
        "token", "create", "--org", "acme", "--permission", PERMISSION,
        env={"MDMQ_DATABASE_URL": postgres_url}, timeout_s=60,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("mdmq_")
    assert get(client, url(world["aosp"], world["delivered"]), token)[0] == 200
    with mdmq.session() as s:
        stored = [(row.token_hash, row.permissions) for row in s.exec(select(ApiToken))]
    assert all(token not in hashed for hashed, _ in stored)
    assert [PERMISSION] in [permissions for _, permissions in stored]


def test_mdmq_token_create_refuses_a_malformed_organization(postgres_url: str) -> None:
    result = run_mdmq(
        "token", "create", "--org", "a!", "--permission", PERMISSION,
        env={"MDMQ_DATABASE_URL": postgres_url}, timeout_s=60,
    )  # fmt: skip
    assert result.returncode == 64
    assert "is not an organization id" in result.stderr


def test_requests_are_counted_by_route_template_never_by_raw_path(
    client: Client, world: dict[str, str]
) -> None:
    route = (
        "/v1/organizations/{organizationId}/mdm/aosp/enterprise/devices/{aosDeviceId}/commands/"
        "{aosCommandId}/push-status"
    )

    def count(path: str, status: str) -> float:
        labels = f'method="GET",route="{path}",status="{status}"'
        return scraped(client.metrics_url).get(f"mdmq_http_requests_total{{{labels}}}", 0.0)

    before = count(route, "401"), count("unmatched", "404")
    client.get(url(world["aosp"], world["pending"]))  # no token
    client.get("/no/such/thing/123")
    client.get("/no/such/thing/456")

    assert (count(route, "401"), count("unmatched", "404")) == (before[0] + 1, before[1] + 2)
    text = client.http.get(client.metrics_url, timeout=30).text
    assert world["pending"] not in text, "no id in any label"
    assert "/no/such/thing" not in text
    timed = scraped(client.metrics_url).get(
        f'mdmq_http_request_duration_seconds_count{{method="GET",route="{route}"}}', 0.0
    )
    assert timed >= 1, "and timed"
