"""Deployments over real HTTP on PostgreSQL: bulk create all or nothing and enqueued, get with history,
cancel and retry with reasons, device reports of a check-in, and another organization's as missing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import select

from models.enums import Platform
from models.ids import new_id
from models.statuses import Status
from models.store import ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.rollouts import get_rollout, rollout_progress
from models.store.sweeps import due_for
from models.store.tokens import create_token
from models.tables import Deployment
from tests.helpers import force_status
from tests.integration.api.conftest import Client
from workers.app import App
from workers.broker import BULK_QUEUE, URGENT_QUEUE
from workers.policy import Lane, lanes

EVERYTHING = [
    "mdm.deployment.create", "mdm.deployment.get", "mdm.deployment.cancel", "mdm.deployment.retry",
    "mdm.device.report",
]  # fmt: skip


@pytest.fixture
def world(mdmq: App) -> dict[str, Any]:
    with mdmq.session() as s:
        for org in ("acme", "other-org"):
            ensure_organization(s, organization_id=org)
        devices = add_devices(
            s,
            organization_id="acme",
            devices=[NewDevice(Platform.ios, f"{i:064x}", push_magic="m") for i in range(3)],
        )
        theirs = add_devices(s, organization_id="other-org", devices=[NewDevice(Platform.ios, "f" * 64)])
        token = create_token(s, organization_id="acme", permissions=EVERYTHING)[1]
        read_only = create_token(s, organization_id="acme", permissions=["mdm.deployment.get"])[1]
    return {"devices": devices, "theirs": theirs[0], "token": token, "read_only": read_only}


def post(client: Client, path: str, token: str, body: Any) -> tuple[int, Any]:
    response = client.http.post(
        client.base_url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    return response.status_code, response.json()


def get(client: Client, path: str, token: str) -> tuple[int, Any]:
    response = client.get(path, headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json()


def _create(client: Client, world: dict[str, Any], kinds: list[str]) -> list[str]:
    body = {
        "deployments": [{"deviceId": d, "kind": k} for d, k in zip(world["devices"], kinds, strict=False)]
    }
    status, answer = post(client, "/v1/organizations/acme/deployments", world["token"], body)
    assert status == 202, answer
    return list(answer["data"]["ids"])


def test_bulk_create_answers_202_with_ids_and_enqueues_after_the_commit(
    client: Client, mdmq: App, world: dict[str, Any]
) -> None:
    ids = _create(client, world, ["profile", "app", "security_action"])

    assert len(ids) == 3
    with mdmq.session() as s:
        rows = {d.id: d for d in s.exec(select(Deployment))}
    assert set(rows) == set(ids)
    assert all(d.status is Status.queued and d.enqueued_at is not None for d in rows.values())
    broker = mdmq.broker
    assert len(broker.queues[URGENT_QUEUE].queue) + len(broker.queues[BULK_QUEUE].queue) >= 2


def test_deployments_created_urgent_go_on_the_urgent_queue_and_stay_there_when_relayed(
    client: Client, mdmq: App, world: dict[str, Any]
) -> None:
    body = {"deployments": [{"deviceId": d, "kind": "profile", "urgent": True} for d in world["devices"]]}
    status, answer = post(client, "/v1/organizations/acme/deployments", world["token"], body)
    assert status == 202, answer

    queues = mdmq.broker.queues
    assert (queues[URGENT_QUEUE].qsize(), queues[BULK_QUEUE].qsize()) == (1, 0), "one chunk, urgent"
    with mdmq.session() as s:
        again = due_for(s, ids=answer["data"]["ids"])  # as the relay and the sweeps read them
    assert [chosen for _, chosen, _ in lanes((d.id, d.organization_id, d.kind, d.urgent) for d in again)] == [
        Lane.urgent
    ]


def test_each_create_is_one_rollout_whose_progress_counts_its_deployments(
    client: Client, mdmq: App, world: dict[str, Any]
) -> None:
    body = {"deployments": [{"deviceId": d, "kind": "profile"} for d in world["devices"]]}
    _, first = post(client, "/v1/organizations/acme/deployments", world["token"], body)
    _, second = post(
        client,
        "/v1/organizations/acme/deployments",
        world["token"],
        body | {"deployments": body["deployments"][:1]},
    )
    first_rollout, second_rollout = first["data"]["rolloutId"], second["data"]["rolloutId"]
    assert first_rollout != second_rollout
    force_status(mdmq.engine, first["data"]["ids"][0], Status.completed)

    with mdmq.session() as s:
        in_rollout = {d.id: d.rollout_id for d in s.exec(select(Deployment))}
        rollouts = [get_rollout(s, rollout_id=i) for i in (first_rollout, second_rollout)]
        progress = rollout_progress(s, rollouts=[r for r in rollouts if r is not None])
    assert {i: in_rollout[i] for i in first["data"]["ids"]} == dict.fromkeys(
        first["data"]["ids"], first_rollout
    )
    assert [p.rollout.total for p in progress] == [3, 1]
    assert progress[0].rollout.kind == "profile"
    assert progress[0].counts == {Status.completed: 1, Status.queued: 2}
    assert (progress[0].finished, progress[0].done) == (1, False)
    assert progress[1].counts == {Status.queued: 1}


def test_one_unknown_device_creates_nothing_and_says_which(
    client: Client, mdmq: App, world: dict[str, Any]
) -> None:
    stranger = new_id()
    body = {
        "deployments": [
            {"deviceId": world["devices"][0], "kind": "profile"},
            {"deviceId": stranger, "kind": "profile"},
            {"deviceId": world["theirs"], "kind": "profile"},  # another organization's: as unknown
        ]
    }
    status, answer = post(client, "/v1/organizations/acme/deployments", world["token"], body)

    assert status == 400
    assert answer["error"]["code"] == 4000
    assert stranger in answer["error"]["message"]
    assert world["theirs"] in answer["error"]["message"]
    with mdmq.session() as s:
        assert list(s.exec(select(Deployment))) == []


@pytest.mark.parametrize(
    "body",
    [
        {"deployments": []},
        {"deployments": [{"deviceId": "nope", "kind": "profile"}]},
        {"deployments": [{"deviceId": "a" * 24, "kind": "wipe-everything"}]},
        {"nothing": True},
    ],
)
def test_a_malformed_body_is_a_400_in_the_envelope(client: Client, world: dict[str, Any], body: Any) -> None:
    status, answer = post(client, "/v1/organizations/acme/deployments", world["token"], body)
    assert (status, answer["status"], answer["error"]["code"]) == (400, False, 4000)
    assert answer["error"]["message"].startswith("Invalid request: ")


def test_get_shows_status_history_and_error_and_hides_another_organizations(
    client: Client, mdmq: App, world: dict[str, Any]
) -> None:
    [deployment_id] = _create(client, world, ["profile"])
    status, answer = post(
        client,
        "/v1/organizations/acme/device-reports",
        world["token"],
        {
            "reports": [
                {
                    "deviceId": world["devices"][0],
                    "deploymentId": deployment_id,
                    "report": "NotNow",
                    "reason": "device locked with passcode",
                }
            ]
        },
    )
    assert (status, answer["data"]["applied"]) == (200, [deployment_id])

    status, answer = get(client, f"/v1/organizations/acme/deployments/{deployment_id}", world["read_only"])
    assert status == 200
    data = answer["data"]
    assert (data["status"], data["postpones"], data["kind"]) == ("Postponed", 1, "profile")
    assert data["organizationId"] == "acme"
    assert [(e["fromStatus"], e["toStatus"], e["actor"]) for e in data["history"]] == [
        ("Queued", "Postponed", "device")
    ]
    assert get(client, f"/v1/organizations/other-org/deployments/{deployment_id}", world["token"])[0] == 404
    with mdmq.session() as s:
        other = create_token(s, organization_id="other-org", permissions=EVERYTHING)[1]
    assert get(client, f"/v1/organizations/other-org/deployments/{deployment_id}", other) == (
        404,
        {"status": False, "error": {"code": 3001, "message": "Entity not found"}},
    )


def test_cancel_and_retry_say_what_was_applied_and_why_not(
    client: Client, mdmq: App, world: dict[str, Any]
) -> None:
    queued, failed, done = _create(client, world, ["profile", "app", "profile"])
    force_status(mdmq.engine, failed, Status.failed)
    force_status(mdmq.engine, done, Status.completed)
    unknown = new_id()

    status, answer = post(
        client, "/v1/organizations/acme/deployments/cancel", world["token"], {"ids": [queued, done, unknown]}
    )
    assert status == 200
    assert answer["data"]["applied"] == [queued]
    assert {r["id"]: r["reason"] for r in answer["data"]["refused"]} == {
        done: "not_allowed",
        unknown: "unknown_deployment",
    }

    status, answer = post(
        client, "/v1/organizations/acme/deployments/retry", world["token"], {"ids": [failed, queued]}
    )
    assert answer["data"]["applied"] == [failed]
    with mdmq.session() as s:
        row = s.get(Deployment, failed)
        assert row is not None
        assert (row.status, row.attempt_count) == (Status.queued, 0)


def test_device_reports_of_a_check_in_apply_in_order_and_refuse_what_does_not_fit(
    client: Client, world: dict[str, Any]
) -> None:
    profile, lock = _create(client, world, ["profile", "security_action"])
    first, second = world["devices"][:2]
    unknown = new_id()
    body = {
        "reports": [
            {"deviceId": first, "deploymentId": profile, "report": "fetched"},
            {"deviceId": first, "deploymentId": profile, "report": "Acknowledged"},
            {"deviceId": second, "deploymentId": lock, "report": "not_now"},  # a lock cannot be postponed
            {"deviceId": first, "deploymentId": unknown, "report": "fetched"},
        ]
    }
    status, answer = post(client, "/v1/organizations/acme/device-reports", world["token"], body)

    assert status == 200
    assert answer["data"]["applied"] == [profile, profile]
    assert {(r["id"], r["reason"]) for r in answer["data"]["refused"]} == {
        (lock, "not_applicable"),
        (unknown, "unknown_deployment"),
    }
    assert (
        get(client, f"/v1/organizations/acme/deployments/{profile}", world["token"])[1]["data"]["status"]
        == "Completed"
    )

    status, answer = post(
        client,
        "/v1/organizations/acme/device-reports",
        world["token"],
        {"reports": [{"deviceId": first, "deploymentId": profile, "report": "exploded"}]},
    )
    assert (status, answer["error"]["code"]) == (400, 4000)


def test_each_route_needs_its_permission(client: Client, world: dict[str, Any]) -> None:
    status, answer = post(
        client,
        "/v1/organizations/acme/deployments",
        world["read_only"],
        {"deployments": [{"deviceId": world["devices"][0], "kind": "profile"}]},
    )
    assert (status, answer["error"]) == (
        403,
        {"code": 4003, "message": "Permission denied: mdm.deployment.create"},
    )


def test_list_filters_and_pages_with_a_cursor(client: Client, mdmq: App, world: dict[str, Any]) -> None:
    ids = _create(client, world, ["profile", "app", "profile"])
    force_status(mdmq.engine, ids[1], Status.failed)
    base = "/v1/organizations/acme/deployments"

    seen, cursor = [], None
    while True:
        status, answer = get(
            client, base + "?limit=2" + (f"&cursor={cursor}" if cursor else ""), world["token"]
        )
        assert status == 200
        assert answer["data"]["total"] == 3, "every page's total counts every match"
        seen += [item["id"] for item in answer["data"]["items"]]
        cursor = answer["data"]["next"]
        if cursor is None:
            break
    assert seen == sorted(ids), "every deployment once, in creation order"

    failed = get(client, base + "?status=Failed&limit=1", world["token"])[1]["data"]
    assert ([i["id"] for i in failed["items"]], failed["total"]) == ([ids[1]], 1)
    assert [
        i["id"] for i in get(client, base + "?kind=profile&status=Queued", world["token"])[1]["data"]["items"]
    ] == [
        ids[0],
        ids[2],
    ]
    assert (
        get(client, base + f"?device={world['devices'][0]}", world["token"])[1]["data"]["items"][0]["id"]
        == ids[0]
    )
    assert get(client, base + "?held=true", world["token"])[1]["data"]["items"] == []
    assert get(client, base + "?stuck=true", world["token"])[1]["data"]["items"] == [], (
        "nothing is an hour old"
    )
    status, answer = get(client, base + "?status=Exploded", world["token"])
    assert (status, answer["error"]["code"]) == (400, 4000)


def _count_deployments(mdmq: App) -> int:
    with mdmq.engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM deployment")).scalar_one())


def test_an_oversize_body_is_a_413_in_the_envelope_and_creates_nothing(
    client: Client, mdmq: App, world: dict[str, Any]
) -> None:
    limit = mdmq.settings.api_max_body_bytes
    one = {"deviceId": world["devices"][0], "kind": "profile", "params": {"pad": "x" * 1000}}
    body = json.dumps({"deployments": [one] * (limit // 1000 + 10)}).encode()
    assert len(body) > limit
    url = client.base_url + "/v1/organizations/acme/deployments"
    headers = {"Authorization": f"Bearer {world['token']}", "Content-Type": "application/json"}

    announced = client.http.post(url, data=body, headers=headers, timeout=30)
    chunked = client.http.post(
        url, data=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]), headers=headers, timeout=30
    )

    for response, size in ((announced, f"{len(body)} bytes"), (chunked, f"more than {limit} bytes")):
        assert response.status_code == 413
        assert response.json() == {
            "status": False,
            "error": {"code": 4013, "message": f"Request body too large: {size}, at most {limit}"},
        }
    assert _count_deployments(mdmq) == 0, "nothing created"
    small = json.dumps({"deployments": [{"deviceId": world["devices"][0], "kind": "profile"}]}).encode()
    read_whole = client.http.post(url, data=iter([small[:10], small[10:]]), headers=headers, timeout=30)
    assert read_whole.status_code == 202, "a chunked body within the limit reaches its route whole"
    assert _count_deployments(mdmq) == 1


def test_text_with_a_nul_character_is_a_400_naming_the_field_and_changes_nothing(
    client: Client, mdmq: App, world: dict[str, Any]
) -> None:
    """PostgreSQL text cannot hold NUL: a body with one is a 400 naming where it sits, before any INSERT."""
    with mdmq.session() as s:
        manager = create_token(s, organization_id="acme", permissions=["mdm.credential.manage"])[1]
    body = {"kind": "aosp_api_key", "secret": "k" * 32, "keyId": "KEY\x00"}
    response = client.http.put(
        client.base_url + "/v1/organizations/acme/credentials/aosp",
        json=body,
        headers={"Authorization": f"Bearer {manager}"},
        timeout=30,
    )
    assert (response.status_code, response.json()["error"]["code"]) == (400, 4000)
    assert response.json()["error"]["pointer"] == "/keyId"
    assert "/keyId: a NUL character" in response.json()["error"]["message"]
    listed = client.get("/v1/organizations/acme/credentials", headers={"Authorization": f"Bearer {manager}"})
    assert listed.json()["data"] == []

    (profile,) = _create(client, world, ["profile"])
    item = {"deviceId": world["devices"][0], "deploymentId": profile, "report": "not_now"}
    report = {"reports": [item | {"reason": "locked\x00"}]}
    status, answer = post(client, "/v1/organizations/acme/device-reports", world["token"], report)
    assert (status, answer["error"]["code"], answer["error"]["pointer"]) == (400, 4000, "/reports/0/reason")
    assert (
        get(client, f"/v1/organizations/acme/deployments/{profile}", world["token"])[1]["data"]["status"]
        == "Queued"
    )
