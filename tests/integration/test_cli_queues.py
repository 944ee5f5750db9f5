"""`mdmq queues` through the real entry point on PostgreSQL: the operator's page's figures in a terminal and
in JSON — a running rollout, a held organization, credentials soonest to expire first — and no secret."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.enums import CredentialKind, Platform, Provider
from models.ids import new_id
from models.statuses import Kind
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.holds import NewHold, hold_provider
from models.store.rollouts import create_rollout
from models.tables import PushCredential
from models.types import utcnow
from tests.helpers import run_mdmq

SECRET = "aosp-key-" + uuid.uuid4().hex


def _arrange(pg: Engine) -> str:
    """Two organizations: acme's rollout of 3 profiles, globex held for AOSP; each with a credential."""
    now = utcnow()
    with Session(pg) as s, s.begin():
        for org in ("acme", "globex"):
            ensure_organization(s, organization_id=org)
        devices = add_devices(
            s,
            organization_id="acme",
            devices=[NewDevice(Platform.ios, uuid.uuid4().hex * 2) for _ in range(3)],
        )
        wanted = [NewDeployment(d, Kind.profile, {"profile": "wifi"}) for d in devices]
        rollout_id = create_rollout(s, organization_id="acme", deployments=wanted)
        create_deployments(s, organization_id="acme", deployments=wanted, rollout_id=rollout_id)
        hold = NewHold(
            "globex", Provider.aosp, "credential", "The AOSP key was refused", "INVALID_API_KEY", None
        )
        hold_provider(s, hold=hold, probe_at=now + timedelta(minutes=1), now=now)
        for org, provider, kind, days in (
            ("acme", Provider.apns, CredentialKind.apns_certificate, 200),
            ("globex", Provider.aosp, CredentialKind.aosp_api_key, None),
            ("globex", Provider.apns, CredentialKind.apns_certificate, 6),
        ):
            s.add(
                PushCredential(
                    id=new_id(),
                    organization_id=org,
                    provider=provider,
                    kind=kind,
                    secret=SECRET,
                    fingerprint=uuid.uuid4().hex,
                    not_after=None if days is None else now + timedelta(days=days),
                )
            )
    return rollout_id


def test_the_figures_in_json_and_in_tables(pg: Engine, postgres_url: str) -> None:
    rollout_id = _arrange(pg)
    env = {"MDMQ_DATABASE_URL": postgres_url}

    result = run_mdmq("queues", "--json", env=env, timeout_s=120)

    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert [q["queue"] for q in figures["queues"]] == ["urgent", "paced", "bulk"]
    [rollout] = figures["rollouts"]
    assert (rollout["id"], rollout["total"], rollout["finished"], rollout["percent"]) == (rollout_id, 3, 0, 0)
    [hold] = figures["holds"]
    assert (hold["organizationId"], hold["provider"], hold["reason"]) == (
        "globex",
        "aosp",
        "The AOSP key was refused",
    )
    soonest = [(c["organizationId"], c["provider"]) for c in figures["credentials"]]
    assert soonest == [("globex", "apns"), ("acme", "apns"), ("globex", "aosp")], "by days left, none last"
    assert SECRET not in result.stdout

    table = run_mdmq("queues", env=env | {"COLUMNS": "200"}, timeout_s=120)
    assert table.returncode == 0, table.stderr
    for shown in (
        rollout_id,
        "globex",
        "The AOSP key was refused",
        "rollouts in progress: 1",
        "urgent",
        "bulk",
    ):
        assert shown in table.stdout
    assert SECRET not in table.stdout
