"""What goes wrong during a rollout, on PostgreSQL and a real broker with real `dramatiq` worker processes:
a credential revoked half-way, a storm of 5xx answers, a crash between commit and enqueue. Each run ends with
every deployment in the status its simulated device dictates.

The rollouts are the demo's (`cli.demo.Rollout`): the sandbox's emulators and fleet in this process, the
workers in their own, the sweeps on a thread.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cli.demo import Rollout
from config.settings import Settings
from models.enums import Provider
from models.statuses import TERMINAL, Kind, Status
from sandbox import Storm
from sandbox.fleet import Behaviour
from sandbox.registry import Delivery
from tests.helpers import free_ports, wait_until
from tests.services import RABBITMQ_URL, REDIS_URL, require

pytestmark = pytest.mark.timeout(600)

State = list[tuple[str, str, Kind, Status]]


@pytest.fixture
def on_redis(pg: Engine, postgres_url: str) -> Settings:
    require(REDIS_URL, "Redis")
    redis.Redis.from_url(REDIS_URL).flushdb()  # this test's own database number: no stale messages
    return Settings(database_url=postgres_url, broker_url=REDIS_URL, **metrics_on_a_free_port())


@pytest.fixture
def on_rabbitmq(pg: Engine, postgres_url: str) -> Settings:
    require(RABBITMQ_URL, "RabbitMQ")
    return Settings(database_url=postgres_url, broker_url=RABBITMQ_URL, **metrics_on_a_free_port())


def metrics_on_a_free_port() -> dict[str, Any]:
    """The workers' metrics server on loopback, on a port nothing else holds: it is one of the processes the
    revoke test counts."""
    return {"metrics_host": "127.0.0.1", "worker_metrics_port": free_ports(1)[0]}


def mismatches(rollout: Rollout, state: State) -> list[tuple[str, Kind, Status, Status]]:
    """Deployments in a final status that is not the one their device dictates."""
    wrong = []
    for deployment_id, device_id, kind, status in state:
        expected = rollout.fleet.expected_status(device_id, kind)
        if status in TERMINAL[kind] and status is not expected:
            wrong.append((deployment_id, kind, status, expected))
    return wrong


def explain(engine: Engine, rollout: Rollout, state: State) -> str:
    """Every deployment not in the status its device dictates, with its device's behaviour and history:
    what a failed run must say for its cause to be found from the CI log alone."""
    wrong = [
        (deployment_id, device_id, kind, status)
        for deployment_id, device_id, kind, status in state
        if status is not rollout.fleet.expected_status(device_id, kind)
    ]
    lines = []
    with engine.connect() as connection:
        for deployment_id, device_id, kind, status in wrong[:20]:
            device = rollout.fleet.device(device_id)
            error = connection.execute(
                sa.text("SELECT error_message FROM deployment WHERE id = :id"), {"id": deployment_id}
            ).scalar()
            lines.append(
                f"{deployment_id} {kind.value} on {device.provider.value} {device.behaviour.value}: "
                f"{status.value}, expected {rollout.fleet.expected_status(device_id, kind).value}; {error}"
            )
            events = connection.execute(
                sa.text(
                    "SELECT at, from_status, to_status, actor, detail FROM deployment_event "
                    "WHERE deployment_id = :id ORDER BY id"
                ),
                {"id": deployment_id},
            )
            lines.extend(
                f"    {e.at:%H:%M:%S.%f} {e.from_status} -> {e.to_status} ({e.actor}) {e.detail}"
                for e in events
            )
    return "\n".join([f"{len(wrong)} of {len(state)} deployments not as dictated", *lines])


def held(engine: Engine, organization_id: str) -> dict[str, str]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT id, hold_reason FROM deployment "
                "WHERE organization_id = :org AND hold_reason IS NOT NULL"
            ),
            {"org": organization_id},
        )
        return {row.id: row.hold_reason for row in rows}


def unsettled(rollout: Rollout, state: State) -> set[str]:
    return {
        deployment_id
        for deployment_id, device_id, kind, status in state
        if status is not rollout.fleet.expected_status(device_id, kind)
    }


def test_a_credential_revoked_mid_rollout_holds_the_rest_and_a_renewal_releases_them(
    pg: Engine, on_redis: Settings
) -> None:
    with Rollout(on_redis, devices=300, seed=11) as rollout:
        revoked = threading.Event()
        old_key = rollout.keys[Provider.apns].key_id
        assert old_key is not None
        apns_pushes = itertools.count(1)

        def revoke_at_the_40th_apns_push(delivery: Delivery) -> None:
            if delivery.provider == "apns" and next(apns_pushes) == 40:
                rollout.registry.revoke_apns_key(old_key)
                revoked.set()

        rollout.registry.subscribe(revoke_at_the_40th_apns_push)
        workers = rollout.workers
        assert workers is not None, "real worker processes"
        wait_until(
            lambda: len(workers.children()) == 3,
            60,
            "two worker processes and the metrics exposition server",
        )
        started = workers.children()
        rollout.start()
        assert revoked.wait(120), "the rollout never made 40 APNs pushes"

        # Everything that still needs APNs ends up held, in Queued; nothing fails for the credential.
        def all_waiting_are_held() -> bool:
            waiting = unsettled(rollout, rollout.wait(0))
            return bool(waiting) and waiting <= held(pg, rollout.organization_id).keys()

        wait_until(all_waiting_are_held, 180, "every unsettled deployment to be held")
        state = rollout.wait(0)
        holds = held(pg, rollout.organization_id)
        assert mismatches(rollout, state) == [], "nothing failed for the revoked key"
        assert {status for d, _, _, status in state if d in holds} == {Status.queued}
        assert all("credential" in reason for reason in holds.values()), set(holds.values())
        apple = {d.id for d in rollout.fleet.devices if d.provider is Provider.apns}
        assert {device for d, device, _, _ in state if d in holds} <= apple, "only APNs deployments are held"

        released = rollout.renew(Provider.apns)
        assert sorted(released) == sorted(holds)
        state = rollout.wait(240)
        result = rollout.result(state, 0)
        assert workers.children() == started, "the same worker processes, never restarted"

    assert result.ok, explain(pg, rollout, state)
    assert held(pg, rollout.organization_id) == {}


def test_a_5xx_storm_delays_the_rollout_and_loses_nothing(pg: Engine, on_redis: Settings) -> None:
    with Rollout(on_redis, devices=300, seed=12) as rollout:
        apns, fcm = rollout.sandbox.apns_faults, rollout.sandbox.fcm_faults
        apns.start_storm(Storm("ServiceUnavailable", fraction=0.5, requests=150))
        fcm.start_storm(Storm("UNAVAILABLE", fraction=0.5, requests=80))
        rollout.start()
        state = rollout.wait(300)
        result = rollout.result(state, 0)
        failed_by_storm = apns.storm_failures, fcm.storm_failures

    assert failed_by_storm == (150, 80), "both storms ran their course"
    assert result.ok, explain(pg, rollout, state)
    with pg.connect() as connection:
        errors = connection.execute(
            sa.text("SELECT DISTINCT error_message FROM deployment WHERE error_message IS NOT NULL")
        ).scalars()
        assert not [e for e in errors if "Unavailable" in e or "UNAVAILABLE" in e], (
            "a 503 never fails anything"
        )
        # The 410s on the way: the provider's reason, and the token marked invalid.
        gone = [d for d in rollout.fleet.devices if d.behaviour is Behaviour.unregistered]
        rows = connection.execute(
            sa.text(
                "SELECT d.error_message, v.token_state, v.token_invalid_reason "
                "FROM deployment d JOIN device v ON v.id = d.device_id WHERE d.device_id = ANY(:ids)"
            ),
            {"ids": [d.id for d in gone]},
        ).all()
    assert gone
    assert len(rows) >= len(gone), "their deployments ended as the fleet dictates: Error distributing"
    assert {row.token_state for row in rows} == {"invalid"}
    assert all(row.token_invalid_reason in row.error_message for row in rows), (
        "it names the provider's reason"
    )
    assert {reason for row in rows for reason in row.token_invalid_reason.split()} >= {"Unregistered"}


def test_a_rollout_committed_but_never_enqueued_is_relayed_through_rabbitmq(
    pg: Engine, on_rabbitmq: Settings
) -> None:
    with Rollout(on_rabbitmq, devices=150, seed=13) as rollout:
        ids = rollout.start(enqueue=False)  # the "crash": committed, and nothing sent to the broker
        with pg.connect() as connection:
            enqueued = connection.execute(
                sa.text("SELECT count(*) FROM deployment WHERE enqueued_at IS NOT NULL")
            ).scalar_one()
        assert enqueued == 0
        state = rollout.wait(300)
        result = rollout.result(state, 0)

    assert result.total == len(ids)
    assert result.ok, explain(pg, rollout, state)
