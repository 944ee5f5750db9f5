"""Device reports bound to their device, and report times: over real HTTP on PostgreSQL, and through the
report actor. A report for a deployment of another device or of no deployment of the organization, or sent
too far ahead of the server's clock, is refused on its own and changes nothing; the rest of its check-in
applies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from models.enums import Platform
from models.ids import new_id
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.tokens import create_token
from models.tables import Deployment
from models.types import utcnow
from tests.helpers import events_of
from tests.integration.api.conftest import Client
from workers.actors import declare_actors
from workers.app import App

REPORTS = "/v1/organizations/acme/device-reports"


@dataclass(frozen=True)
class Fleet:
    """Two devices of acme and one of another organization, each with deployments that nothing has sent."""

    token: str
    alice: str  # a device of acme
    bob: str  # another device of acme
    alice_profile: str
    alice_wipe: str
    bob_profile: str
    stranger: str  # a deployment of the other organization
    stranger_device: str


@pytest.fixture
def fleet(mdmq: App) -> Fleet:
    with mdmq.session() as s:
        for organization_id in ("acme", "other-org"):
            ensure_organization(s, organization_id=organization_id)
        alice, bob = add_devices(
            s,
            organization_id="acme",
            devices=[NewDevice(Platform.ios, f"{i:064x}", push_magic="m") for i in range(2)],
        )
        [stranger_device] = add_devices(
            s, organization_id="other-org", devices=[NewDevice(Platform.ios, "f" * 64, push_magic="m")]
        )
        wanted = [
            NewDeployment(alice, Kind.profile, {"profile": "com.example.wifi"}),
            NewDeployment(alice, Kind.security_action, {"action": "wipe"}),
            NewDeployment(bob, Kind.profile, {"profile": "com.example.wifi"}),
        ]
        alice_profile, alice_wipe, bob_profile = create_deployments(
            s, organization_id="acme", deployments=wanted
        )
        [stranger] = create_deployments(
            s, organization_id="other-org", deployments=[NewDeployment(stranger_device, Kind.profile)]
        )
        token = create_token(s, organization_id="acme", permissions=["mdm.device.report"])[1]
    return Fleet(token, alice, bob, alice_profile, alice_wipe, bob_profile, stranger, stranger_device)


def _post(client: Client, token: str, *reports: dict[str, Any]) -> tuple[int, Any]:
    response = client.http.post(
        client.base_url + REPORTS,
        json={"reports": list(reports)},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return response.status_code, response.json()


def _item(device_id: str, deployment_id: str, report: str, **more: Any) -> dict[str, Any]:
    return {"deviceId": device_id, "deploymentId": deployment_id, "report": report, **more}


def _state(mdmq: App, deployment_id: str) -> tuple[Any, ...]:
    """Everything a report may change on a deployment: its row's report-driven columns and its events."""
    with mdmq.session() as s:
        row = s.get(Deployment, deployment_id)
        assert row is not None
        columns = (row.status, row.updated_at, row.last_report_at, row.last_device_reason, row.postpone_count,
                   row.attempt_count, row.error_code, row.finished_at)  # fmt: skip
    events = [(e.from_status, e.to_status, e.actor) for e in events_of(mdmq.engine, deployment_id)]
    return (*columns, events)


def _refused(answer: Any) -> list[tuple[str, str]]:
    return [(r["id"], r["reason"]) for r in answer["data"]["refused"]]


def _refusals_counted(reason: str) -> float:
    labels = {"reason": reason, "actor": "device"}
    return REGISTRY.get_sample_value("mdmq_transition_refusals_total", labels) or 0.0


def test_a_report_for_another_devices_deployment_is_refused_and_changes_nothing(
    client: Client, mdmq: App, fleet: Fleet
) -> None:
    before = _state(mdmq, fleet.bob_profile)

    status, answer = _post(
        client,
        fleet.token,
        _item(fleet.alice, fleet.bob_profile, "fetched"),
        _item(fleet.alice, fleet.bob_profile, "acknowledged"),
    )

    assert status == 200
    assert answer["data"]["applied"] == []
    assert _refused(answer) == [(fleet.bob_profile, "not_this_device")] * 2
    assert _state(mdmq, fleet.bob_profile) == before, "no status, report time, counter or event changed"


def test_a_wipe_never_sent_cannot_be_completed_by_another_devices_report(
    client: Client, mdmq: App, fleet: Fleet
) -> None:
    before = _state(mdmq, fleet.alice_wipe)

    for report in ("accepted", "acknowledged", "Acknowledged"):
        status, answer = _post(client, fleet.token, _item(fleet.bob, fleet.alice_wipe, report))
        assert (status, _refused(answer)) == (200, [(fleet.alice_wipe, "not_this_device")])

    assert _state(mdmq, fleet.alice_wipe) == before
    assert before[0] is Status.queued


def test_an_unknown_deployment_or_another_organizations_is_refused_as_unknown(
    client: Client, mdmq: App, fleet: Fleet
) -> None:
    missing = new_id()
    before = _state(mdmq, fleet.stranger)

    status, answer = _post(
        client,
        fleet.token,
        _item(fleet.alice, missing, "fetched"),
        _item(fleet.stranger_device, fleet.stranger, "acknowledged"),  # its own device, another organization
        _item(fleet.alice, fleet.stranger, "acknowledged"),
    )

    assert status == 200
    assert answer["data"]["applied"] == []
    assert _refused(answer) == [
        (missing, "unknown_deployment"),
        (fleet.stranger, "unknown_deployment"),
        (fleet.stranger, "unknown_deployment"),
    ], "another organization's deployment is as unknown as a missing one: its device is not told apart"
    assert _state(mdmq, fleet.stranger) == before


def test_a_mixed_check_in_applies_the_good_reports_and_refuses_the_bad_ones(
    client: Client, mdmq: App, fleet: Fleet
) -> None:
    bobs_before, wipe_before = _state(mdmq, fleet.bob_profile), _state(mdmq, fleet.alice_wipe)
    far = (utcnow() + timedelta(hours=1)).isoformat()
    missing = new_id()

    status, answer = _post(
        client,
        fleet.token,
        _item(fleet.alice, fleet.alice_profile, "fetched"),
        _item(fleet.alice, fleet.bob_profile, "acknowledged"),
        _item(fleet.alice, missing, "fetched"),
        _item(fleet.alice, fleet.alice_wipe, "acknowledged", reportedAt=far),
        _item(fleet.alice, fleet.alice_profile, "processing"),
        _item(fleet.alice, fleet.alice_profile, "Acknowledged"),
    )

    assert status == 200
    assert answer["data"]["applied"] == [fleet.alice_profile] * 3
    assert sorted(_refused(answer)) == sorted([
        (fleet.bob_profile, "not_this_device"),
        (missing, "unknown_deployment"),
        (fleet.alice_wipe, "reported_in_future"),
    ])  # fmt: skip
    events = [(e.from_status, e.to_status) for e in events_of(mdmq.engine, fleet.alice_profile)]
    assert events == [
        (Status.queued, Status.waiting),
        (Status.waiting, Status.in_progress),
        (Status.in_progress, Status.completed),
    ]
    assert _state(mdmq, fleet.bob_profile) == bobs_before
    assert _state(mdmq, fleet.alice_wipe) == wipe_before


def test_a_report_sent_beyond_the_lead_is_refused_and_does_not_freeze_the_deployment(
    client: Client, mdmq: App, fleet: Fleet
) -> None:
    lead_s = mdmq.settings.report_max_lead_s
    assert lead_s == 300, "the default: five minutes"
    before = _state(mdmq, fleet.alice_profile)

    for ahead in (timedelta(seconds=lead_s + 30), timedelta(days=3650)):
        at = (utcnow() + ahead).isoformat()
        status, answer = _post(
            client, fleet.token, _item(fleet.alice, fleet.alice_profile, "fetched", reportedAt=at)
        )
        assert (status, _refused(answer)) == (200, [(fleet.alice_profile, "reported_in_future")])
    assert _state(mdmq, fleet.alice_profile) == before

    status, answer = _post(client, fleet.token, _item(fleet.alice, fleet.alice_profile, "acknowledged"))
    assert (status, answer["data"]["applied"]) == (200, [fleet.alice_profile]), "later reports still apply"


def test_a_small_lead_counts_as_the_servers_now_and_a_later_server_stamped_report_applies(
    client: Client, mdmq: App, fleet: Fleet
) -> None:
    sent = utcnow()
    ahead = (sent + timedelta(seconds=120)).isoformat()

    status, answer = _post(
        client, fleet.token, _item(fleet.alice, fleet.alice_profile, "fetched", reportedAt=ahead)
    )
    answered = utcnow()

    assert (status, answer["data"]["applied"]) == (200, [fleet.alice_profile])
    with mdmq.session() as s:
        row = s.get(Deployment, fleet.alice_profile)
        assert row is not None
        last_report_at: datetime | None = row.last_report_at
    assert last_report_at is not None
    assert sent <= last_report_at <= answered, "taken as received, not two minutes ahead"

    # Stamped by the server when it arrives: before the first report's own time, after the server's.
    status, answer = _post(client, fleet.token, _item(fleet.alice, fleet.alice_profile, "acknowledged"))
    assert (status, answer["data"]["applied"], answer["data"]["refused"]) == (200, [fleet.alice_profile], [])
    assert _state(mdmq, fleet.alice_profile)[0] is Status.completed


def test_a_report_time_without_a_time_zone_is_a_400_saying_so(
    client: Client, mdmq: App, fleet: Fleet
) -> None:
    before = _state(mdmq, fleet.alice_profile)

    status, answer = _post(
        client,
        fleet.token,
        _item(fleet.alice, fleet.alice_profile, "fetched", reportedAt="2026-11-23T10:00:00"),
    )

    assert (status, answer["status"], answer["error"]["code"]) == (400, False, 4000)
    assert (
        answer["error"]["message"] == "Invalid request: reports.0.reportedAt: Input should have timezone info"
    )
    assert _state(mdmq, fleet.alice_profile) == before


@pytest.mark.parametrize(
    ("device", "problem"),
    [
        (None, "reports.0.deviceId: Field required"),
        ("nope", "reports.0.deviceId: String should match pattern"),
        ("g" * 24, "reports.0.deviceId: String should match pattern"),
    ],
)
def test_a_report_without_a_well_formed_device_id_is_a_400_naming_the_field(
    client: Client, mdmq: App, fleet: Fleet, device: str | None, problem: str
) -> None:
    item: dict[str, Any] = {"deploymentId": fleet.alice_profile, "report": "fetched"}
    if device is not None:
        item["deviceId"] = device
    before = _state(mdmq, fleet.alice_profile)

    status, answer = _post(client, fleet.token, item)

    assert (status, answer["error"]["code"]) == (400, 4000)
    assert answer["error"]["message"].startswith(f"Invalid request: {problem}")
    assert _state(mdmq, fleet.alice_profile) == before


def test_the_report_actor_refuses_what_the_api_refuses(mdmq: App, fleet: Fleet) -> None:
    record = declare_actors(mdmq).record_report.fn
    far = (utcnow() + timedelta(hours=1)).isoformat()
    watched = (fleet.alice_profile, fleet.alice_wipe, fleet.bob_profile, fleet.stranger)
    before = {d: _state(mdmq, d) for d in watched}
    counted = {
        r: _refusals_counted(r) for r in ("not_this_device", "unknown_deployment", "reported_in_future")
    }

    record(fleet.bob_profile, "acknowledged", device_id=fleet.alice, organization_id="acme")
    record(fleet.alice_wipe, "acknowledged", device_id=fleet.bob, organization_id="acme")
    record(fleet.stranger, "acknowledged", device_id=fleet.stranger_device, organization_id="acme")
    record(new_id(), "fetched", device_id=fleet.alice, organization_id="acme")
    record(fleet.alice_profile, "fetched", None, None, far, device_id=fleet.alice, organization_id="acme")
    record(fleet.alice_profile, "acknowledged")  # a message that names no device
    record(fleet.alice_profile, "acknowledged", device_id=fleet.alice)  # nor its organization

    assert {d: _state(mdmq, d) for d in watched} == before
    assert {r: _refusals_counted(r) - n for r, n in counted.items()} == {
        "not_this_device": 2,
        "unknown_deployment": 2,
        "reported_in_future": 1,
    }

    sent = utcnow()
    ahead = (sent + timedelta(seconds=120)).isoformat()
    record(fleet.alice_profile, "fetched", None, None, ahead, device_id=fleet.alice, organization_id="acme")
    record(fleet.alice_profile, "acknowledged", None, None, utcnow().isoformat(), device_id=fleet.alice,
           organization_id="acme")  # fmt: skip
    assert _state(mdmq, fleet.alice_profile)[0] is Status.completed, "the small lead was taken as now"
