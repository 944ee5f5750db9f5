"""`mdmq held`, `mdmq release` and `mdmq devices restore-tokens` through the real entry point on PostgreSQL:
what they change, what they print for scripts, and their exit codes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from models.enums import Provider, TokenState
from models.statuses import Kind
from models.store.dispatch import Invalidation, hold_for_credential, invalidate_tokens
from models.store.holds import NewHold, hold_provider
from models.tables import AuditEvent, Deployment, Device, ProviderHold
from models.types import utcnow
from tests.conftest import MakeDeployments
from tests.helpers import mdmq_json

REASON = "the push certificate's topic does not match the devices' enrollment topic: upload the renewal"


@pytest.fixture
def mdmq(postgres_url: str) -> Any:
    return mdmq_json(postgres_url)


def _held(pg: Engine, make_deployments: MakeDeployments) -> list[str]:
    ids = make_deployments(pg, Kind.profile, count=3)
    now = utcnow()
    with Session(pg) as s, s.begin():
        hold = NewHold("acme", Provider.apns, "config", REASON, "DeviceTokenNotForTopic", "f" * 64)
        hold_provider(s, hold=hold, probe_at=now + timedelta(minutes=1), now=now)
        hold_for_credential(s, organization_id="acme", provider=Provider.apns, reason=REASON)
    return ids


def test_held_names_the_hold_its_reason_and_the_next_try(
    pg: Engine, make_deployments: MakeDeployments, mdmq: Any
) -> None:
    _held(pg, make_deployments)

    code, out, _ = mdmq("held", "--json")

    assert code == 0
    [hold] = out["holds"]
    assert (hold["organizationId"], hold["provider"], hold["scope"], hold["reason"]) == (
        "acme",
        "apns",
        "config",
        REASON,
    )
    assert (hold["providerReason"], hold["credential"], hold["tries"]) == (
        "DeviceTokenNotForTopic",
        "f" * 64,
        0,
    )
    assert hold["nextTryAt"] is not None
    assert out["held"] == [{"organizationId": "acme", "reason": REASON, "count": 3}]
    code, text, _ = mdmq("held")
    assert code == 0
    assert "mdmq release --org ORG --provider PROVIDER" in text


def test_release_by_hand_releases_the_deployments_and_records_who(
    pg: Engine, make_deployments: MakeDeployments, mdmq: Any
) -> None:
    ids = _held(pg, make_deployments)

    code, out, _ = mdmq("release", "--org", "acme", "--provider", "apns", "--json")

    assert (code, out["released"], out["reason"]) == (0, 3, REASON)
    with Session(pg) as s:
        assert s.exec(select(ProviderHold)).all() == []
        assert {d.hold_reason for d in s.exec(select(Deployment).where(Deployment.id.in_(ids)))} == {None}  # type: ignore[attr-defined]
        [event] = s.exec(select(AuditEvent)).all()
    assert (event.organization_id, event.actor, event.action) == ("acme", "cli", "hold.released")
    assert event.detail == {"provider": "apns", "by": "hand", "reason": REASON, "held": 3}
    assert mdmq("release", "--org", "acme", "--provider", "apns")[0] == 1, "nothing held any more"
    assert mdmq("release", "--org", "acme", "--provider", "pager")[0] != 0


def test_restore_tokens_restores_what_the_operator_selects(
    pg: Engine, make_deployments: MakeDeployments, mdmq: Any
) -> None:
    make_deployments(pg, Kind.profile, count=3)
    now = utcnow()
    with Session(pg) as s, s.begin():
        devices = [d.id for d in s.exec(select(Device).order_by(col(Device.id)))]
        invalidate_tokens(
            s,
            invalidations=[
                Invalidation(devices[0], "BadDeviceToken", now, 400, "wrong-certificate", ambiguous=True),
                Invalidation(devices[1], "BadDeviceToken", now, 400, "wrong-certificate", ambiguous=True),
                Invalidation(
                    devices[2], "Unregistered", now - timedelta(days=3), 410, "right", ambiguous=False
                ),
            ],
        )

    assert mdmq("devices", "restore-tokens", "--org", "acme", "--since", "yesterday")[0] == 64
    assert mdmq("devices", "restore-tokens", "--org", "acme", "--credential", "nobody")[0] == 1
    code, out, _ = mdmq(
        "devices", "restore-tokens", "--org", "acme", "--credential", "wrong-certificate", "--json"
    )
    assert (code, out) == (0, {"organizationId": "acme", "restored": 2})
    since = (now - timedelta(hours=1)).isoformat()
    assert mdmq("devices", "restore-tokens", "--org", "acme", "--since", since)[0] == 1, "the 410 is older"

    with Session(pg) as s:
        states = {d.id: d.token_state for d in s.exec(select(Device))}
        [event] = s.exec(select(AuditEvent)).all()
    assert [states[d] for d in devices] == [TokenState.valid, TokenState.valid, TokenState.invalid]
    assert (event.action, event.detail) == (
        "tokens.restored",
        {"restored": 2, "since": None, "credential": "wrong-certificate"},
    )
