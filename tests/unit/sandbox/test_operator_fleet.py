"""The operator's fleet file and the sandbox's control route: every row is one `mdmq devices import` stores,
the dead devices' tokens are the ones the open sandbox answers as dead, and the control route lists what
reached a device and revokes a push certificate."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from models.store.enrollment import Enrollment
from sandbox.control import ControlHandler, DeliveryLog
from sandbox.fleet import Behaviour
from sandbox.http2 import ConnectionInfo, Request
from sandbox.operator_fleet import DEAD_PREFIXES, LABEL_PREFIX, fleet_rows, read_fleet
from sandbox.registry import DeviceRegistry
from sandbox.tls import issue_mdm_push_certificate, mdm_topic
from workers.services.devices import parse_row

TOPIC = mdm_topic()


def test_every_row_is_one_the_import_stores() -> None:
    rows = list(fleet_rows(devices=500, seed=3, topic=TOPIC))
    parsed = [parse_row(i, row) for i, row in enumerate(rows)]
    assert all(isinstance(p, Enrollment) for p in parsed), [
        p for p in parsed if not isinstance(p, Enrollment)
    ]
    assert {r["topic"] for r in rows if r["platform"] in ("ios", "macos")} == {TOPIC}
    assert len({r["id"] for r in rows}) == 500


def test_the_default_mix_settles_without_the_retry_policys_waits() -> None:
    rows = list(fleet_rows(devices=500, seed=3))
    behaviours = Counter(r["labels"][0].removeprefix(LABEL_PREFIX) for r in rows)
    assert set(behaviours) == {"success", "device_error", "invalid_payload"}


def test_dead_devices_carry_their_providers_dead_prefix_and_the_others_none() -> None:
    mix = {Behaviour.success: 0.5, Behaviour.unregistered: 0.5}
    rows = list(fleet_rows(devices=500, seed=3, mix=mix))
    assert {r["platform"] for r in rows if r["labels"] == [f"{LABEL_PREFIX}unregistered"]} >= {
        "ios",
        "android",
    }
    for row in rows:
        dead = any(row["token"].startswith(prefix) for prefix in DEAD_PREFIXES.values())
        assert dead == (row["labels"] == [f"{LABEL_PREFIX}unregistered"]), row["id"]


def test_the_same_seed_writes_the_same_fleet(tmp_path: Path) -> None:
    first = list(fleet_rows(devices=50, seed=9))
    assert first == list(fleet_rows(devices=50, seed=9))
    path = tmp_path / "fleet.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in first))
    fleet = read_fleet(path)
    assert {d.id for d in fleet.values()} == {r["id"] for r in first}
    assert all(isinstance(d.behaviour, Behaviour) for d in fleet.values())


def _request(method: str, path: str, body: bytes = b"") -> Request:
    return Request(method, path, "127.0.0.1", (), body, ConnectionInfo())


def test_the_control_route_lists_deliveries_after_a_sequence_number() -> None:
    registry = DeviceRegistry(open_registration=True)
    handler = ControlHandler(registry, DeliveryLog(registry))
    for token in ("aa" * 32, "bb" * 32, "cc" * 32):
        registry.add_aosp_device(token)
        registry.accept_push(token, push_id="p", payload={}, expires_at=registry.clock() + 60)
    first = json.loads(handler(_request("GET", "/deliveries?after=0&limit=2")).body)
    assert [d["token"] for d in first["deliveries"]] == ["aa" * 32, "bb" * 32]
    rest = json.loads(handler(_request("GET", f"/deliveries?after={first['next']}")).body)
    assert [(d["seq"], d["provider"]) for d in rest["deliveries"]] == [(3, "aosp")]
    assert json.loads(handler(_request("GET", "/deliveries?after=3")).body) == {"deliveries": [], "next": 3}
    assert handler(_request("GET", "/deliveries?after=x")).status == 400
    assert handler(_request("GET", "/nothing")).status == 404


def test_the_control_route_revokes_a_push_certificate() -> None:
    registry = DeviceRegistry(open_registration=True)
    handler = ControlHandler(registry, DeliveryLog(registry))
    certificate = issue_mdm_push_certificate(registry, topic=TOPIC)
    assert (
        handler(_request("POST", "/apns/certificates/revoke", certificate.pem_bundle.encode())).status == 200
    )
    assert registry.credentials.revoked_apns_certificates
    assert handler(_request("POST", "/apns/certificates/revoke", b"not a certificate")).status == 400
