"""`Idempotency-Key` on create, over real HTTP on PostgreSQL: a retry gets the first answer, another body is
refused with 4022, keys are per organization, expire, and concurrent requests with one key create once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from sqlmodel import func, select

from api.app import create_app
from models.enums import Platform
from models.store import ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.idempotency import ClaimLost, NewClaim, claim_key, keep_answer, purge_expired_keys
from models.store.tokens import create_token
from models.tables import Deployment, IdempotencyKey, table_of
from models.types import utcnow
from tests.integration.api.conftest import Client
from workers.app import App

CREATE = "/v1/organizations/{org}/deployments"


@pytest.fixture
def world(mdmq: App) -> dict[str, Any]:
    tokens, devices = {}, {}
    with mdmq.session() as s:
        for org, token in (("acme", "a"), ("other-org", "b")):
            ensure_organization(s, organization_id=org)
            new = [NewDevice(Platform.ios, f"{token}{i:063x}", push_magic="m") for i in range(3)]
            devices[org] = add_devices(s, organization_id=org, devices=new)
            tokens[org] = create_token(s, organization_id=org, permissions=["mdm.deployment.create"])[1]
    return {"tokens": tokens, "devices": devices}


def create(
    client: Client, world: dict[str, Any], *, key: str | None, org: str = "acme", kind: str = "profile"
) -> requests.Response:
    body = {"deployments": [{"deviceId": d, "kind": kind} for d in world["devices"][org]]}
    headers = {"Authorization": f"Bearer {world['tokens'][org]}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.http.post(client.base_url + CREATE.format(org=org), json=body, headers=headers, timeout=30)


def deployments(mdmq: App) -> int:
    with mdmq.session() as s:
        return int(s.exec(select(func.count()).select_from(Deployment)).one())


def test_the_same_key_and_body_get_the_first_answer_again(
    client: Client, mdmq: App, world: dict[str, Any]
) -> None:
    first = create(client, world, key="order-1")
    again = create(client, world, key="order-1")

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert deployments(mdmq) == 3


def test_the_same_key_with_another_body_is_refused_with_4022(
    client: Client, mdmq: App, world: dict[str, Any]
) -> None:
    assert create(client, world, key="order-1").status_code == 202

    refused = create(client, world, key="order-1", kind="app")

    assert refused.status_code == 422
    assert refused.json() == {
        "status": False,
        "error": {
            "code": 4022,
            "message": "Idempotency key reused: the Idempotency-Key came first with another request body",
        },
    }
    assert deployments(mdmq) == 3


def test_without_a_key_every_request_creates(client: Client, mdmq: App, world: dict[str, Any]) -> None:
    assert create(client, world, key=None).status_code == 202
    assert create(client, world, key=None).status_code == 202

    assert deployments(mdmq) == 6


def test_another_organizations_same_key_is_its_own(client: Client, mdmq: App, world: dict[str, Any]) -> None:
    ours = create(client, world, key="order-1")
    theirs = create(client, world, key="order-1", org="other-org")

    assert ours.status_code == theirs.status_code == 202
    assert set(ours.json()["data"]["ids"]).isdisjoint(theirs.json()["data"]["ids"])
    assert deployments(mdmq) == 6


def test_an_expired_key_creates_anew_and_the_retention_purge_deletes_it(
    client: Client, mdmq: App, world: dict[str, Any]
) -> None:
    first = create(client, world, key="order-1")
    _expire_keys(mdmq)

    later = create(client, world, key="order-1", kind="app")

    assert later.status_code == 202
    assert later.json()["data"]["ids"] != first.json()["data"]["ids"]
    assert deployments(mdmq) == 6
    _expire_keys(mdmq)
    with mdmq.session() as s:
        assert purge_expired_keys(s, before=utcnow()) == 1
        assert s.exec(select(func.count()).select_from(IdempotencyKey)).one() == 0


def test_a_refused_create_keeps_nothing_and_frees_the_key(
    client: Client, mdmq: App, world: dict[str, Any]
) -> None:
    headers = {"Authorization": f"Bearer {world['tokens']['acme']}", "Idempotency-Key": "order-1"}
    unknown = {"deployments": [{"deviceId": "e" * 24, "kind": "profile"}]}
    url = client.base_url + CREATE.format(org="acme")

    refused = client.http.post(url, json=unknown, headers=headers, timeout=30)
    corrected = create(client, world, key="order-1")

    assert refused.status_code == 400
    assert corrected.status_code == 202
    assert deployments(mdmq) == 3


@pytest.mark.parametrize("key", ["", "x" * 256, "two words"])
def test_a_malformed_key_is_a_400_naming_the_header(
    client: Client, mdmq: App, world: dict[str, Any], key: str
) -> None:
    refused = create(client, world, key=key)

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == 4000
    assert "Idempotency-Key" in refused.json()["error"]["message"]
    assert deployments(mdmq) == 0


def test_a_key_needs_the_permission_of_the_create(client: Client, mdmq: App, world: dict[str, Any]) -> None:
    with mdmq.session() as s:
        reader = create_token(s, organization_id="acme", permissions=["mdm.deployment.get"])[1]
    assert create(client, world, key="order-1").status_code == 202
    world["tokens"]["acme"] = reader

    refused = create(client, world, key="order-1")

    assert refused.status_code == 403


def test_concurrent_requests_with_one_key_create_once(
    client: Client, mdmq: App, world: dict[str, Any]
) -> None:
    """Each request either holds the key (one does), finds it in progress (409, to retry) or replays."""
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: create(client, world, key="order-1"), range(32)))

    statuses = {a.status_code for a in answers}
    assert statuses <= {202, 409}, statuses
    ids = {tuple(a.json()["data"]["ids"]) for a in answers if a.status_code == 202}
    assert len(ids) == 1
    for busy in (a for a in answers if a.status_code == 409):
        assert busy.json()["error"]["code"] == 4009
        assert busy.headers["Retry-After"] == "1"
    assert deployments(mdmq) == 3


def test_a_request_whose_lock_ran_out_cannot_keep_its_answer_once_a_retry_took_the_key(mdmq: App) -> None:
    """The holder's process stalled past its lock: a retry with the same body takes the key over, and the
    holder's work, kept in one transaction with its answer, rolls back instead of creating twice."""
    first = NewClaim("acme", "order-1", "h" * 64, "first")
    retry = NewClaim("acme", "order-1", "h" * 64, "retry")
    now = utcnow()
    with mdmq.session() as s:
        assert claim_key(s, claim=first, now=now, lock_s=60, keep_s=86_400).claimed
    with mdmq.session() as s:
        busy = claim_key(s, claim=retry, now=now, lock_s=60, keep_s=86_400)
        taken = claim_key(s, claim=retry, now=now + timedelta(seconds=61), lock_s=60, keep_s=86_400)

    assert not busy.claimed
    assert busy.answer is None
    assert not busy.reused
    assert taken.claimed
    with pytest.raises(ClaimLost), mdmq.session() as s:
        keep_answer(s, claim=first, status=202, answer={"status": True})
    with mdmq.session() as s:
        keep_answer(s, claim=retry, status=202, answer={"status": True})
        assert claim_key(s, claim=first, now=now, lock_s=60, keep_s=86_400).answer == {"status": True}


def test_the_document_shows_the_header_and_the_answers_it_adds(mdmq: App) -> None:
    operation = create_app(mdmq).openapi()["paths"]["/v1/organizations/{organizationId}/deployments"]["post"]

    assert "Idempotency-Key" in {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert {"202", "409", "422"} <= set(operation["responses"])
    assert "4022" in operation["responses"]["422"]["description"]


def _expire_keys(mdmq: App) -> None:
    keys = table_of(IdempotencyKey)
    with mdmq.session() as s:
        s.connection().execute(sa.update(keys).values(expires_at=utcnow() - timedelta(seconds=1)))
