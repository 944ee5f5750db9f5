"""An organization's wake-up rate and weight over real HTTP on PostgreSQL: read, changed field by field,
reset with null, audited; bad values are 400s in the envelope that change nothing."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from models.store import ensure_organization
from models.store.audit import audit_events
from models.store.organizations import fair_share_of, organization_exists
from models.store.tokens import create_token
from tests.integration.api.conftest import Client
from workers.app import App

SETTINGS = "/v1/organizations/acme/settings"


@pytest.fixture
def token(mdmq: App) -> str:
    with mdmq.session() as s:
        ensure_organization(s, organization_id="acme")
        _, secret = create_token(s, organization_id="acme", permissions=["mdm.organization.manage"])
    return secret


def patch(client: Client, token: str, body: Any) -> requests.Response:
    return client.http.patch(
        f"{client.base_url}{SETTINGS}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def test_settings_are_changed_field_by_field_and_reset_with_null(
    client: Client, token: str, mdmq: App
) -> None:
    assert client.get(SETTINGS, headers={"Authorization": f"Bearer {token}"}).json()["data"] == {
        "organizationId": "acme",
        "wakeRatePerS": None,
        "fairWeight": 1,
    }

    rate = patch(client, token, {"wakeRatePerS": 50})
    weight = patch(client, token, {"fairWeight": 3})
    assert rate.status_code == weight.status_code == 200, (rate.text, weight.text)
    assert weight.json()["data"] == {"organizationId": "acme", "wakeRatePerS": 50.0, "fairWeight": 3}

    reset = patch(client, token, {"wakeRatePerS": None})
    assert reset.json()["data"] == {"organizationId": "acme", "wakeRatePerS": None, "fairWeight": 3}
    with mdmq.session() as s:
        assert fair_share_of(s, organization_id="acme").weight == 3
        changes = [e.detail for e in audit_events(s, organization_id="acme", action="settings.changed")]
    assert changes == [{"wakeRatePerS": None}, {"fairWeight": 3}, {"wakeRatePerS": 50.0}]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"wakeRatePerS": 0}, "wakeRatePerS"),
        ({"wakeRatePerS": -5}, "wakeRatePerS"),
        ({"wakeRatePerS": 1e-300}, "wakeRatePerS"),
        ({"wakeRatePerS": 0.09}, "wakeRatePerS"),
        ({"wakeRatePerS": 100_001}, "wakeRatePerS"),
        ({"wakeRatePerS": "fast"}, "wakeRatePerS"),
        ({"fairWeight": 0}, "fairWeight"),
        ({"fairWeight": 101}, "fairWeight"),
        ({"fairWeight": 2.5}, "fairWeight"),
        ({"fairWeight": "2"}, "fairWeight"),
        ({"fairWeight": 2, "weight": 2}, "weight"),
    ],
)
def test_a_bad_value_is_a_400_that_changes_nothing(
    client: Client, token: str, mdmq: App, body: dict[str, Any], field: str
) -> None:
    patch(client, token, {"fairWeight": 4, "wakeRatePerS": 10})

    answer = patch(client, token, body)

    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["status"] is False
    assert error["error"]["code"] == 4000
    assert field in error["error"]["message"]
    with mdmq.session() as s:
        share = fair_share_of(s, organization_id="acme")
    assert (share.weight, share.wake_rate_per_s) == (4, 10.0)


def test_settings_need_their_permission(client: Client, mdmq: App) -> None:
    with mdmq.session() as s:
        ensure_organization(s, organization_id="acme")
        _, reader = create_token(s, organization_id="acme", permissions=["mdm.deployment.get"])

    answer = patch(client, reader, {"fairWeight": 2})

    assert answer.status_code == 403, answer.text
    with mdmq.session() as s:
        assert fair_share_of(s, organization_id="acme").weight == 1


@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_an_unknown_organization_is_not_found_and_not_created(
    client: Client, token: str, mdmq: App, method: str
) -> None:
    answer = client.http.request(
        method,
        f"{client.base_url}/v1/organizations/nobody/settings",
        json={"fairWeight": 2} if method == "PATCH" else None,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )

    assert answer.status_code == 404, answer.text
    assert answer.json() == {"status": False, "error": {"code": 3001, "message": "Entity not found"}}
    with mdmq.session() as s:
        assert not organization_exists(s, organization_id="nobody")
        assert audit_events(s, organization_id="nobody", action="settings.changed") == []
