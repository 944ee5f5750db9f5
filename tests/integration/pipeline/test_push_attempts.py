"""Failed pushes show: real pushes to the sandbox's APNs over TLS, on PostgreSQL, read back through the HTTP
API and `mdmq status`. A provider's 503 storm and a refused certificate leave each deployment Queued with
the provider's answer as its error, the retry's time as its next attempt, and the attempt in its history."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from models.enums import CredentialKind, Platform, Provider, PushEnvironment
from models.statuses import Kind
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.dispatch import DispatchRecord
from models.store.tokens import create_token
from models.tables import PushAttempt
from sandbox import DeviceRegistry, Sandbox, SandboxThread, Storm
from sandbox.tls import MdmPushCertificate, issue_mdm_push_certificate, mdm_topic
from tests.helpers import run_mdmq, sandbox_settings
from tests.integration.api.conftest import serving
from workers.app import App
from workers.policy import RetryPolicy
from workers.services.credentials import store_credential
from workers.services.dispatch import DispatchSummary, dispatch_chunk, plan, record, send
from workers.services.dispatch import load as load_chunk

POLICY = RetryPolicy.defaults()
ORG = "acme"
STORM = Storm(reason="ServiceUnavailable", fraction=1.0, duration_s=3600, retry_after_s=30)


@dataclass
class World:
    app: App
    registry: DeviceRegistry
    certificate: MdmPushCertificate
    sandbox: Sandbox
    base_url: str
    token: str
    database_url: str

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        """The deployment as the API answers it."""
        response = requests.get(
            f"{self.base_url}/v1/organizations/{ORG}/deployments/{deployment_id}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    def dispatch(self, ids: list[str]) -> DispatchSummary:
        return dispatch_chunk(self.app.session, self.app.gateway, ids, policy=POLICY)


@pytest.fixture
def world(pg: Engine, postgres_url: str, tmp_path: Path) -> Iterator[World]:
    registry = DeviceRegistry()
    certificate = issue_mdm_push_certificate(registry, topic=mdm_topic(), days=365)
    with SandboxThread(registry, tls=True) as sandbox:
        app = App(sandbox_settings(sandbox, tmp_path, database_url=postgres_url, broker_url="stub://"))
        with app.session() as s:
            ensure_organization(s, organization_id=ORG)
            store_credential(
                s,
                organization_id=ORG,
                provider=Provider.apns,
                kind=CredentialKind.apns_certificate,
                secret=certificate.pem_bundle,
                environment=PushEnvironment.production,
            )
            token = create_token(s, organization_id=ORG, permissions=["mdm.deployment.get"])[1]
        with serving(app) as base_url:
            yield World(app, registry, certificate, sandbox, base_url, token, postgres_url)
        app.close()


def _fleet(world: World, count: int) -> list[str]:
    """`count` iPhones, one profile each."""
    tokens = [secrets.token_hex(32) for _ in range(count)]
    for token in tokens:
        world.registry.add_apns_device(token, topic=world.certificate.topic)
    with world.app.session() as s:
        devices = add_devices(
            s,
            organization_id=ORG,
            devices=[NewDevice(Platform.ios, t, push_magic=f"magic-{i}") for i, t in enumerate(tokens)],
        )
        return create_deployments(
            s, organization_id=ORG, deployments=[NewDeployment(d, Kind.profile) for d in devices]
        )


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_503_storm_shows_the_answer_and_the_retry_while_queued(world: World) -> None:
    ids = _fleet(world, 3)
    world.sandbox.apns_faults.start_storm(STORM)

    summary = world.dispatch(ids)

    assert summary.retry is not None
    shown = world.deployment(ids[0])
    assert shown["status"] == "Queued"
    attempt = shown["pushAttempts"][0]
    assert (attempt["provider"], attempt["outcome"]) == ("apns", "transient")
    assert (attempt["status"], attempt["reason"]) == (503, "ServiceUnavailable")
    retry_at = _at(attempt["at"]) + timedelta(seconds=summary.retry.delay_s)
    assert _at(attempt["nextAttemptAt"]) == retry_at, "the retry's message, not the re-push sweep"
    assert _at(shown["nextAttemptAt"]) == retry_at
    assert shown["error"]["code"] == "push_failed"
    assert shown["error"]["message"].startswith("APNs did not accept the push: 503 ServiceUnavailable")
    assert shown["error"]["detail"] == {
        "provider": "apns",
        "status": 503,
        "reason": "ServiceUnavailable",
        "outcome": "transient",
    }

    world.sandbox.apns_faults.stop_storm()
    again = world.dispatch(summary.retry.deployment_ids)

    assert again.accepted == 3
    shown = world.deployment(ids[0])
    assert shown["error"] is None, "pushed since: the failed push is history, not the error"
    assert len(shown["pushAttempts"]) == 1
    assert shown["receipt"] is not None


def test_a_refused_certificate_shows_its_answer_and_the_holds_next_try(world: World) -> None:
    ids = _fleet(world, 2)
    world.registry.revoke_apns_client_certificate(world.certificate.issued.certificate)

    summary = world.dispatch(ids)

    assert summary.held == 2
    shown = world.deployment(ids[1])
    assert shown["status"] == "Queued"
    assert shown["held"] is not None
    (attempt,) = shown["pushAttempts"]
    assert attempt["outcome"] == "credential"
    assert attempt["reason"], "the provider's answer, or the refusal when no answer came"
    assert shown["error"]["code"] == "push_failed"
    assert attempt["nextAttemptAt"] is not None, "the hold's probe"
    assert _at(shown["nextAttemptAt"]) == _at(attempt["nextAttemptAt"])


def test_mdmq_status_shows_the_failed_pushes(world: World) -> None:
    ids = _fleet(world, 1)
    world.sandbox.apns_faults.start_storm(STORM)
    world.dispatch(ids)

    env = {"MDMQ_DATABASE_URL": world.database_url, "MDMQ_BROKER_URL": "stub://"}
    as_json = run_mdmq("status", ids[0], "--json", env=env, timeout_s=60)
    table = run_mdmq("status", ids[0], env=env, timeout_s=60)

    assert as_json.returncode == 0, as_json.stderr
    shown = json.loads(as_json.stdout)
    assert [(a["status"], a["reason"]) for a in shown["pushAttempts"]] == [(503, "ServiceUnavailable")]
    assert shown["error"]["code"] == "push_failed"
    assert table.returncode == 0, table.stderr
    assert "failed pushes" in table.stdout
    assert "ServiceUnavailable" in table.stdout


def test_a_record_written_later_carries_its_failed_pushes_and_writes_them_once(world: World) -> None:
    ids = _fleet(world, 2)
    world.sandbox.apns_faults.start_storm(STORM)
    loaded = load_chunk(world.app.session, ids, policy=POLICY, now=datetime.now().astimezone())
    planned = plan(loaded, send(world.app.gateway, loaded), failures=1, redeliver_after_s=600)
    message = json.loads(json.dumps(planned.record.as_message()))

    written = DispatchRecord.from_message(message)
    record(world.app.session, written, again=True)
    record(world.app.session, written, again=True)

    assert written.failed == planned.record.failed
    with Session(world.app.engine) as s:
        assert s.exec(select(func.count()).select_from(PushAttempt)).one() == 2
