"""The fault suite on a small fleet: each fault of `benchmarks.faults`, injected into a rollout on PostgreSQL,
Redis and real `dramatiq` worker processes, then the audit of every deployment. `python -m benchmarks.faults`
runs the same faults on 20,000 devices.

Every fault must leave every deployment in the status its simulated device dictates, every transition one the
tables allow, and every status explained by its history and error text. Faults that crash nothing (provider
errors, GOAWAY, a revoked push certificate) must also push no device twice for the same wake-up.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from benchmarks.faults import FAULTS, Audit, run_fault
from tests.services import REDIS_URL, require

pytestmark = pytest.mark.timeout(600)

DEVICES = 200
# Faults that lose no worker's record of a push: anything delivered twice would be a bug.
NOTHING_CRASHES = {"503-storm", "429-burst", "goaway", "revoke-renew"}


def run(name: str, postgres_url: str, tmp_path: Path) -> Audit:
    require(REDIS_URL, "Redis")
    audit = run_fault(
        FAULTS[name],
        devices=DEVICES,
        postgres_url=postgres_url,
        broker_url=REDIS_URL,
        timeout_s=300,
        worker_log=tmp_path / "workers.log",
    )
    print(audit.line(), audit.fault_figures)  # the figures, in the test's output
    return audit


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_every_deployment_ends_as_its_device_dictates(
    name: str, pg: Engine, postgres_url: str, tmp_path: Path
) -> None:
    audit = run(name, postgres_url, tmp_path)

    assert audit.deployments > 2 * DEVICES, "the whole rollout was audited"
    assert audit.ok, "\n".join([audit.line(), *audit.examples])
    if name in NOTHING_CRASHES:
        assert audit.duplicated_pushes == 0, audit.line()
    figures = audit.fault_figures
    match name:
        case "sigkill":
            assert figures["worker_restarts"] >= figures["kills"] == 5
        case "redis-restart" | "postgres-restart":
            assert 0 < figures["pushes_before"] < audit.pushes_delivered, "the restart came mid-rollout"
        case "503-storm":
            assert figures["failed_by_storm"] > 0
            assert not errors_mentioning(pg, audit, "Unavailable"), "a 503 never fails anything"
        case "goaway":
            assert figures["goaways"] > 0
        case "429-burst":
            assert figures["turned_away"] > 0
        case "garbage":
            assert figures["garbage_answers"] > 0
            assert not errors_mentioning(pg, audit, "unreadable"), "garbage never fails anything"
        case "revoke-renew":
            assert figures["held"] > 0
            assert figures["released_all_held"], figures
            assert figures["failed_while_held"] == 0, "the revoked certificate failed nothing"
    if name not in {"goaway", "garbage"}:  # faults with an end: pushes went on after it
        assert audit.recovery_s is not None, "a device got a push after the fault"


def errors_mentioning(pg: Engine, audit: Audit, text: str) -> list[str]:
    with pg.connect() as connection:
        return list(
            connection.execute(
                sa.text(
                    "SELECT DISTINCT error_message FROM deployment "
                    "WHERE organization_id = :org AND error_message LIKE :text"
                ),
                {"org": audit.organization, "text": f"%{text}%"},
            ).scalars()
        )
