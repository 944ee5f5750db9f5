"""Devices over real HTTP on PostgreSQL: enroll and update (TokenUpdate), tokens checked per provider, the
topic an Apple device keeps, a batch's good rows stored and bad ones answered, reads without secrets, the
list's filters and pages, and unenrollment cancelling what the device has not started."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from models.enums import TokenState
from models.ids import new_id
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.audit import audit_events
from models.store.tokens import create_token
from models.tables import Deployment, DeploymentEvent, Device, PushDeadAnswer, table_of
from models.types import utcnow
from tests.helpers import force_status
from tests.integration.api.conftest import Client
from workers.app import App
from workers.broker import BULK_QUEUE, URGENT_QUEUE

TOPIC = "com.apple.mgmt.External.2c3e8f1a-4b5d-4e6f-8a9b-0c1d2e3f4a5b"
OTHER_TOPIC = "com.apple.mgmt.External.9f8e7d6c-5b4a-4938-8271-605f4e3d2c1b"
FCM_TOKEN = "cWq1nB2xT0aP3lVt9mZkYd:APA91b" + "x" * 134
MANAGE = ["mdm.device.manage", "mdm.device.get", "mdm.deployment.create"]


@pytest.fixture
def tokens(mdmq: App) -> dict[str, str]:
    with mdmq.session() as s:
        for org in ("acme", "other-org"):
            ensure_organization(s, organization_id=org)
        return {
            "manage": create_token(s, organization_id="acme", permissions=MANAGE)[1],
            "read": create_token(s, organization_id="acme", permissions=["mdm.device.get"])[1],
            "theirs": create_token(s, organization_id="other-org", permissions=MANAGE)[1],
        }


def call(client: Client, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    response = client.http.request(
        method,
        client.base_url + path,
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    return response.status_code, response.json()


def iphone(token: str | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "platform": "ios",
        "token": token or secrets.token_hex(32),
        "pushMagic": secrets.token_hex(16),
        "topic": TOPIC,
    } | fields


def put(client: Client, token: str, device_id: str, body: dict[str, Any]) -> tuple[int, Any]:
    return call(client, "PUT", f"/v1/organizations/acme/devices/{device_id}", token, body)


def test_enroll_then_update_and_the_answer_shows_no_secret(client: Client, tokens: dict[str, str]) -> None:
    device_id, body = new_id(), iphone(labels=["floor-3", "kiosk"])

    status, answer = put(client, tokens["manage"], device_id, body)
    assert status == 201, answer
    data = answer["data"]
    assert (data["id"], data["platform"], data["provider"], data["topic"]) == (
        device_id,
        "ios",
        "apns",
        TOPIC,
    )
    assert data["labels"] == ["floor-3", "kiosk"]
    assert data["token"] == {
        "state": "valid", "reason": None, "providerStatus": None, "invalidAt": None, "ambiguous": False,
    }  # fmt: skip
    assert data["enrolled"] is True
    text = str(answer)
    assert body["token"] not in text
    assert body["pushMagic"] not in text

    status, again = put(client, tokens["manage"], device_id, iphone())
    assert status == 200, again
    assert again["data"]["labels"] == ["floor-3", "kiosk"], "labels absent: the stored ones stay"
    status, read = call(client, "GET", f"/v1/organizations/acme/devices/{device_id}", tokens["read"])
    assert status == 200
    assert read["data"]["lastPushAt"] is None
    assert read["data"]["lastReportAt"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (iphone(token="zz" * 32), "token"),  # not hex
        (iphone(token="abc"), "token"),  # an odd number of hex digits, and too short
        (iphone(token=FCM_TOKEN), "token"),  # an FCM token is no APNs token
        ({"platform": "android", "token": "a" * 64 + " b"}, "token"),
        ({"platform": "android", "token": "short:APA91b"}, "token"),
        ({"platform": "aosp", "token": "has space"}, "token"),
        ({"platform": "android", "token": secrets.token_hex(32), "provider": "apns"}, "provider"),
        (iphone(pushMagic=None), "pushMagic"),
        (iphone(topic="com.example.not-mdm"), "topic"),
        ({"platform": "android", "token": FCM_TOKEN, "topic": TOPIC}, "topic"),
        ({"platform": "ios", "token": secrets.token_hex(32), "secretField": 1}, "secretField"),
    ],
)
def test_a_token_or_field_a_provider_cannot_take_is_a_400_naming_it(
    client: Client, mdmq: App, tokens: dict[str, str], body: dict[str, Any], field: str
) -> None:
    status, answer = put(client, tokens["manage"], new_id(), body)

    assert (status, answer["error"]["code"]) == (400, 4000), answer
    assert f"{field}:" in answer["error"]["message"] or f"{field} " in answer["error"]["message"]
    assert body["token"] not in answer["error"]["message"], "the token is never repeated"
    with mdmq.session() as s:
        assert list(s.exec(select(Device))) == []


def test_push_magic_is_at_most_128_characters_and_the_longest_is_stored_sealed(
    client: Client, mdmq: App, tokens: dict[str, str]
) -> None:
    longest = new_id()
    assert put(client, tokens["manage"], longest, iphone(pushMagic="m" * 128))[0] == 201

    status, answer = put(client, tokens["manage"], new_id(), iphone(pushMagic="m" * 129))
    assert (status, answer["error"]["code"]) == (400, 4000), answer
    assert "pushMagic" in answer["error"]["message"]
    rows = [{"id": new_id()} | iphone(pushMagic="m" * 512), {"id": new_id()} | iphone()]
    status, answer = call(
        client, "POST", "/v1/organizations/acme/devices:batch", tokens["manage"], {"devices": rows}
    )
    assert status == 200, answer
    assert answer["data"]["stored"] == 1
    assert [(r["index"], r["field"]) for r in answer["data"]["refused"]] == [(0, "pushMagic")]
    with mdmq.session() as s:
        assert s.get_one(Device, longest).push_magic == "m" * 128


def test_each_provider_takes_its_own_tokens(client: Client, tokens: dict[str, str]) -> None:
    for body in (
        iphone(token=secrets.token_hex(32)),
        {"platform": "macos", "token": secrets.token_hex(40), "pushMagic": "m", "topic": TOPIC},
        {"platform": "android", "token": FCM_TOKEN},
        {"platform": "aosp", "token": secrets.token_hex(11)},
    ):
        status, answer = put(client, tokens["manage"], new_id(), body)
        assert status == 201, answer


def test_an_apple_device_keeps_its_topic_until_unenrolled(client: Client, tokens: dict[str, str]) -> None:
    device_id = new_id()
    assert put(client, tokens["manage"], device_id, iphone())[0] == 201

    status, answer = put(client, tokens["manage"], device_id, iphone(topic=OTHER_TOPIC))
    assert (status, answer["error"]["code"]) == (409, 4019), answer
    assert answer["error"]["message"].startswith("Topic change refused: ")
    assert "unenroll" in answer["error"]["message"]

    assert call(client, "DELETE", f"/v1/organizations/acme/devices/{device_id}", tokens["manage"])[0] == 200
    status, answer = put(client, tokens["manage"], device_id, iphone(topic=OTHER_TOPIC))
    assert status == 200, answer
    assert (answer["data"]["topic"], answer["data"]["enrolled"]) == (OTHER_TOPIC, True)


def test_a_token_update_makes_an_invalidated_token_valid_and_sends_what_waited(
    client: Client, mdmq: App, tokens: dict[str, str]
) -> None:
    device_id = new_id()
    assert put(client, tokens["manage"], device_id, iphone())[0] == 201
    with mdmq.session() as s:
        refused, held, waiting = create_deployments(
            s,
            organization_id="acme",
            deployments=[NewDeployment(device_id, k) for k in (Kind.profile, Kind.app, Kind.profile)],
        )
        s.add(PushDeadAnswer(fingerprint="f" * 64, device_id=device_id))
        s.add(PushDeadAnswer(fingerprint="e" * 64, device_id=device_id))
        device = s.get(Device, device_id)
        assert device is not None
        device.token_state, device.token_invalid_reason = TokenState.invalid, "Unregistered"
        device.token_invalid_at, device.token_invalid_status = utcnow(), 410
        s.add(device)
    force_status(mdmq.engine, refused, Status.error_distributing)
    with mdmq.session() as s:
        s.connection().execute(
            sa.update(table_of(Deployment))
            .where(table_of(Deployment).c.id == refused)
            .values(error_code="push_token_rejected")
        )
        s.connection().execute(
            sa.update(table_of(Deployment))
            .where(table_of(Deployment).c.id == held)
            .values(hold_reason="APNs credential revoked")  # the organization's hold: not the token's
        )
    broker = mdmq.broker
    before = sum(len(broker.queues[q].queue) for q in (URGENT_QUEUE, BULK_QUEUE))

    status, answer = put(client, tokens["manage"], device_id, iphone())  # a new token and push magic

    assert status == 200, answer
    assert answer["data"]["token"]["state"] == "valid"
    assert answer["data"]["token"]["reason"] is None
    with mdmq.session() as s:
        assert list(s.exec(select(PushDeadAnswer))) == [], "its dead-token answers count no more"
        rows = {d.id: d for d in s.exec(select(Deployment))}
        events = list(s.exec(select(DeploymentEvent).where(DeploymentEvent.deployment_id == refused)))
    assert {i: (rows[i].status, rows[i].hold_reason) for i in (refused, held, waiting)} == {
        refused: (Status.queued, None),
        held: (Status.queued, "APNs credential revoked"),  # for the hold's release to send
        waiting: (Status.queued, None),
    }
    assert [(e.from_status, e.to_status, e.actor.value) for e in events][-1] == (
        Status.error_distributing, Status.queued, "api",
    )  # fmt: skip
    after = sum(len(broker.queues[q].queue) for q in (URGENT_QUEUE, BULK_QUEUE))
    assert after > before, "the deployments that waited are enqueued"
    assert all(rows[i].enqueued_at is not None for i in (refused, waiting))


def test_the_same_token_again_leaves_an_invalidated_token_invalid(
    client: Client, mdmq: App, tokens: dict[str, str]
) -> None:
    device_id, body = new_id(), iphone()
    assert put(client, tokens["manage"], device_id, body)[0] == 201
    with mdmq.session() as s:
        device = s.get(Device, device_id)
        assert device is not None
        device.token_state, device.token_invalid_reason = TokenState.invalid, "Unregistered"
        s.add(device)

    status, answer = put(client, tokens["manage"], device_id, body)  # a stale re-import of the same row

    assert status == 200
    assert answer["data"]["token"] | {"invalidAt": None} == {
        "state": "invalid", "reason": "Unregistered", "providerStatus": None, "invalidAt": None,
        "ambiguous": False,
    }  # fmt: skip


def test_a_batch_stores_the_good_rows_and_answers_each_bad_one(
    client: Client, mdmq: App, tokens: dict[str, str]
) -> None:
    enrolled = new_id()
    assert put(client, tokens["manage"], enrolled, iphone())[0] == 201
    theirs = new_id()
    assert (
        call(client, "PUT", f"/v1/organizations/other-org/devices/{theirs}", tokens["theirs"], iphone())[0]
        == 201
    )
    good = [new_id() for _ in range(3)]
    rows = [
        {"id": good[0]} | iphone(),
        {"id": "not-an-id"} | iphone(),
        {"id": good[1], "platform": "android", "token": FCM_TOKEN, "labels": ["fleet"]},
        {"id": new_id(), "platform": "android", "token": "x"},
        {"id": enrolled} | iphone(topic=OTHER_TOPIC),
        {"id": theirs} | iphone(),
        {"id": good[2], "platform": "aosp", "token": secrets.token_hex(11)},
        {"id": good[2], "platform": "aosp", "token": secrets.token_hex(11)},
        "not an object",
    ]

    status, answer = call(
        client, "POST", "/v1/organizations/acme/devices:batch", tokens["manage"], {"devices": rows}
    )

    assert status == 200, answer
    data = answer["data"]
    assert (data["stored"], data["created"], data["updated"]) == (3, 3, 0)
    refused = {r["index"]: (r["field"], r["reason"].split(":")[0]) for r in data["refused"]}
    assert set(refused) == {1, 3, 4, 5, 7, 8}
    assert refused[1][0] == "id"
    assert refused[3][0] == "token"
    assert refused[4] == ("topic", "topic_change_refused")
    assert refused[5] == ("id", "device_id_taken")
    assert refused[7] == ("id", "duplicate_id")
    with mdmq.session() as s:
        ours = set(s.exec(select(Device.id).where(Device.organization_id == "acme")))
    assert ours == {enrolled, *good}


def test_a_batch_over_10000_rows_is_refused_whole(client: Client, tokens: dict[str, str]) -> None:
    rows = [{"id": new_id(), "platform": "aosp", "token": "t"}] * 10_001
    status, answer = call(
        client, "POST", "/v1/organizations/acme/devices:batch", tokens["manage"], {"devices": rows}
    )
    assert (status, answer["error"]["code"]) == (400, 4000)
    assert "devices" in answer["error"]["message"]


def test_the_list_filters_and_pages(client: Client, tokens: dict[str, str]) -> None:
    ids = sorted(new_id() for _ in range(5))
    bodies = [
        iphone(labels=["kiosk"]),
        iphone(),
        {"platform": "android", "token": FCM_TOKEN, "labels": ["kiosk", "floor-3"]},
        {"platform": "aosp", "token": secrets.token_hex(11)},
        {"platform": "aosp", "token": secrets.token_hex(11), "labels": ["kiosk"]},
    ]
    for device_id, body in zip(ids, bodies, strict=True):
        assert put(client, tokens["manage"], device_id, body)[0] == 201
    assert call(client, "DELETE", f"/v1/organizations/acme/devices/{ids[4]}", tokens["manage"])[0] == 200

    def listed(query: str) -> list[str]:
        status, answer = call(client, "GET", f"/v1/organizations/acme/devices?{query}", tokens["read"])
        assert status == 200, answer
        assert all(
            "pushMagic" not in item
            and set(item["token"]) == {"state", "reason", "providerStatus", "invalidAt", "ambiguous"}
            for item in answer["data"]["items"]
        )
        return [item["id"] for item in answer["data"]["items"]]

    assert listed("") == ids[:4], "the enrolled, by default"
    assert listed("platform=ios") == ids[:2]
    assert listed("provider=aosp&enrolled=all") == ids[3:]
    assert listed("enrolled=unenrolled") == [ids[4]]
    assert listed("label=kiosk") == [ids[0], ids[2]]
    assert listed("tokenState=invalid") == []
    status, first = call(client, "GET", "/v1/organizations/acme/devices?limit=3", tokens["read"])
    assert [i["id"] for i in first["data"]["items"]] == ids[:3]
    assert listed(f"limit=3&cursor={first['data']['next']}") == [ids[3]]
    status, answer = call(client, "GET", "/v1/organizations/acme/devices?platform=nokia", tokens["read"])
    assert (status, answer["error"]["code"]) == (400, 4000)


def test_unenroll_cancels_what_the_device_has_not_started_and_keeps_the_row(
    client: Client, mdmq: App, tokens: dict[str, str]
) -> None:
    device_id = new_id()
    assert put(client, tokens["manage"], device_id, iphone())[0] == 201
    statuses = [Status.queued, Status.postponed, Status.waiting_for_startup, Status.error_distributing,
                Status.in_progress, Status.completed]  # fmt: skip
    with mdmq.session() as s:
        ids = create_deployments(
            s, organization_id="acme", deployments=[NewDeployment(device_id, Kind.profile) for _ in statuses]
        )
    for deployment_id, wanted in zip(ids, statuses, strict=True):
        if wanted is not Status.queued:
            force_status(mdmq.engine, deployment_id, wanted)

    status, answer = call(client, "DELETE", f"/v1/organizations/acme/devices/{device_id}", tokens["manage"])

    assert status == 200, answer
    assert sorted(answer["data"]["cancelled"]) == sorted(ids[:4])
    with mdmq.session() as s:
        rows = {d.id: d for d in s.exec(select(Deployment))}
        cancelled_events = list(
            s.exec(select(DeploymentEvent).where(col(DeploymentEvent.to_status) == Status.cancelled))
        )
        device = s.get(Device, device_id)
    assert [rows[i].status for i in ids] == [Status.cancelled] * 4 + [Status.in_progress, Status.completed]
    assert {(rows[i].error_code, rows[i].error_message) for i in ids[:4]} == {
        ("device_unenrolled", "device unenrolled")
    }
    assert len(cancelled_events) == 4
    assert device is not None, "the row stays, for history"
    assert device.unenrolled_at is not None
    with mdmq.session() as s:
        (event,) = audit_events(
            s, organization_id="acme", action="device.unenrolled", since=None, before=None, limit=5
        )
    assert event.detail == {"device": device_id, "cancelled": 4, "ids": answer["data"]["cancelled"]}
    status, read = call(client, "GET", f"/v1/organizations/acme/devices/{device_id}", tokens["read"])
    assert (status, read["data"]["enrolled"]) == (200, False)

    status, answer = call(
        client, "POST", "/v1/organizations/acme/deployments", tokens["manage"],
        {"deployments": [{"deviceId": device_id, "kind": "profile"}]},
    )  # fmt: skip
    assert (status, answer["error"]["code"]) == (400, 4000), "an unenrolled device is as an unknown one"
    assert device_id in answer["error"]["message"]


def test_the_last_push_is_its_deployments_latest(client: Client, mdmq: App, tokens: dict[str, str]) -> None:
    device_id = new_id()
    assert put(client, tokens["manage"], device_id, iphone())[0] == 201
    with mdmq.session() as s:
        ids = create_deployments(
            s, organization_id="acme", deployments=[NewDeployment(device_id, Kind.profile) for _ in range(2)]
        )
    pushed = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    with mdmq.session() as s:
        s.connection().execute(
            sa.update(table_of(Deployment))
            .where(table_of(Deployment).c.id == ids[0])
            .values(pushed_at=pushed)
        )

    status, answer = call(client, "GET", f"/v1/organizations/acme/devices/{device_id}", tokens["read"])

    assert status == 200
    assert answer["data"]["lastPushAt"].replace("Z", "+00:00") == pushed.isoformat()


def test_permissions_and_another_organizations_device(client: Client, tokens: dict[str, str]) -> None:
    device_id = new_id()
    status, answer = put(client, tokens["read"], device_id, iphone())
    assert (status, answer["error"]["code"]) == (403, 4003)
    assert "mdm.device.manage" in answer["error"]["message"]
    assert put(client, tokens["manage"], device_id, iphone())[0] == 201
    for method in ("GET", "DELETE"):
        status, answer = call(
            client, method, f"/v1/organizations/other-org/devices/{device_id}", tokens["theirs"]
        )
        assert (status, answer["error"]["code"]) == (404, 3001)
    status, answer = call(client, "GET", f"/v1/organizations/acme/devices/{device_id}", tokens["theirs"])
    assert (status, answer["error"]["code"]) == (404, 3001)


def test_the_last_report_is_when_the_device_last_reported(
    client: Client, mdmq: App, tokens: dict[str, str]
) -> None:
    device_id = new_id()
    assert put(client, tokens["manage"], device_id, iphone())[0] == 201
    with mdmq.session() as s:
        (deployment_id,) = create_deployments(
            s, organization_id="acme", deployments=[NewDeployment(device_id, Kind.profile)]
        )
        reporter = create_token(s, organization_id="acme", permissions=["mdm.device.report"])[1]
    reported = utcnow().replace(microsecond=0) - timedelta(minutes=1)
    report = {"deviceId": device_id, "deploymentId": deployment_id, "report": "fetched"}
    body = {"reports": [report | {"reportedAt": reported.isoformat()}]}
    assert call(client, "POST", "/v1/organizations/acme/device-reports", reporter, body)[0] == 200
    older = {
        "reports": [
            report | {"report": "processing", "reportedAt": (reported - timedelta(hours=1)).isoformat()}
        ]
    }
    assert call(client, "POST", "/v1/organizations/acme/device-reports", reporter, older)[0] == 200

    status, answer = call(client, "GET", f"/v1/organizations/acme/devices/{device_id}", tokens["read"])

    assert status == 200
    assert answer["data"]["lastReportAt"].replace("Z", "+00:00") == reported.isoformat(), "never moved back"


def test_a_batch_retried_with_its_idempotency_key_gets_the_first_answer(
    client: Client, mdmq: App, tokens: dict[str, str]
) -> None:
    rows = [{"id": new_id()} | iphone() for _ in range(2)]
    path = client.base_url + "/v1/organizations/acme/devices:batch"
    headers = {"Authorization": f"Bearer {tokens['manage']}", "Idempotency-Key": "fleet-import-1"}

    first = client.http.post(path, json={"devices": rows}, headers=headers, timeout=60)
    again = client.http.post(path, json={"devices": rows}, headers=headers, timeout=60)
    other = client.http.post(path, json={"devices": rows[:1]}, headers=headers, timeout=60)

    assert first.status_code == 200, first.text
    assert (first.json()["data"]["created"], first.json()["data"]["updated"]) == (2, 0)
    assert (again.status_code, again.json()) == (200, first.json()), "the first answer, not two updates"
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert (other.status_code, other.json()["error"]["code"]) == (422, 4022)
    with mdmq.session() as s:
        stored = list(s.exec(select(Device)))
    assert sorted(d.id for d in stored) == sorted(r["id"] for r in rows)
    assert all(d.updated_at == d.created_at for d in stored), "the retry stored nothing again"
