"""The ops commands through the real `mdmq` entry point against PostgreSQL: what they print for scripts
(`--json`), and the exit codes scripts branch on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.deployments import DeploymentOut, DeploymentSummary
from config.settings import Settings
from models.enums import CertificateSource, CredentialKind, Provider
from models.ids import new_id
from models.statuses import Kind, Status
from models.store.dispatch import hold_for_credential
from models.tables import Deployment, PushCredential, WatchedCertificate
from models.types import utcnow
from tests.conftest import MakeDeployments
from tests.helpers import device_of, force_status, free_ports, run_mdmq, status_of, wait_until
from tests.services import REDIS_URL, require
from workers.actors import declare_actors
from workers.app import App

DEPLOYMENT = Deployment.__table__  # type: ignore[attr-defined]


@pytest.fixture
def mdmq(postgres_url: str) -> Any:
    def run(*args: str, answer: str | None = None) -> tuple[int, Any, str]:
        result = run_mdmq(*args, env={"MDMQ_DATABASE_URL": postgres_url}, timeout_s=120, answer=answer)
        try:
            out = json.loads(result.stdout) if "--json" in args else result.stdout
        except json.JSONDecodeError:
            out = result.stdout
        return result.returncode, out, result.stderr

    return run


def test_status_of_a_deployment_and_the_exit_codes_of_a_missing_or_malformed_one(
    pg: Engine, make_deployments: MakeDeployments, mdmq: Any
) -> None:
    [deployment_id] = make_deployments(pg, Kind.profile)

    code, out, _ = mdmq("status", deployment_id, "--json")
    assert code == 0
    assert (out["id"], out["status"], out["kind"], out["history"]) == (deployment_id, "Queued", "profile", [])
    assert set(out) == set(DeploymentOut.model_fields), "the API's names"
    assert (out["organizationId"], out["receipt"]) == ("acme", None)
    assert mdmq("status", new_id())[0] == 1
    code, _, err = mdmq("status", "not-an-id")
    assert code == 64
    assert "not a deployment id" in err


def test_deployments_filtered_by_status_and_kind(
    pg: Engine, make_deployments: MakeDeployments, mdmq: Any
) -> None:
    failed, queued = make_deployments(pg, Kind.profile, count=2)
    force_status(pg, failed, Status.failed)

    code, out, _ = mdmq("deployments", "--status", "Failed", "--kind", "profile", "--json")
    assert (code, [d["id"] for d in out["deployments"]]) == (0, [failed])
    assert set(out["deployments"][0]) == set(DeploymentSummary.model_fields), "the API's names"
    assert mdmq("deployments", "--status", "Failed", "--kind", "app", "--json")[0] == 1, "nothing: exit 1"
    assert mdmq("deployments", "--status", "Exploded")[0] == 64
    assert queued in {d["id"] for d in mdmq("deployments", "--org", "acme", "--json")[1]["deployments"]}


def test_held_and_stuck(pg: Engine, make_deployments: MakeDeployments, mdmq: Any) -> None:
    assert mdmq("held", "--json")[0] == 1
    ids = make_deployments(pg, Kind.app, count=3)
    with Session(pg) as s, s.begin():
        hold_for_credential(
            s, organization_id="acme", provider=Provider.apns, reason="APNs credential expired"
        )
    code, out, _ = mdmq("held", "--json")
    assert (code, out) == (
        0,
        {"holds": [], "held": [{"organizationId": "acme", "reason": "APNs credential expired", "count": 3}]},
    )

    with pg.begin() as connection:
        connection.execute(
            sa.update(DEPLOYMENT)
            .where(DEPLOYMENT.c.id == ids[0])
            .values(status="Waiting", hold_reason=None, updated_at=utcnow() - timedelta(days=1))
        )
    code, out, _ = mdmq("stuck", "--json")
    assert (code, out) == (0, {"stuck": [{"kind": "app", "status": "Waiting", "count": 1}]})


def test_certs_lists_every_certificate_soonest_first(
    pg: Engine, make_deployments: MakeDeployments, mdmq: Any
) -> None:
    make_deployments(pg, Kind.app)  # the organization
    now = utcnow()
    with Session(pg) as s, s.begin():
        certificate = CredentialKind.apns_certificate
        in_20_days = now + timedelta(days=20)
        s.add(
            PushCredential(
                id=new_id(), organization_id="acme", provider=Provider.apns, kind=certificate,
                secret="-", fingerprint="-", not_after=in_20_days,
            )
        )  # fmt: skip
        s.add(
            WatchedCertificate(
                source=CertificateSource.pem_file,
                target="/etc/mdm/server.pem",
                not_after=now + timedelta(days=3),
            )
        )

    code, out, _ = mdmq("certs", "--json")
    assert code == 0
    assert [(c["name"], round(c["daysLeft"])) for c in out["certificates"]] == [
        ("/etc/mdm/server.pem", 3),
        ("acme/apns", 20),
    ]
    assert "-" not in [c.get("secret") for c in out["certificates"]]


def test_cancel_and_retry_by_ids_or_by_filter_with_a_confirmation(
    pg: Engine, make_deployments: MakeDeployments, mdmq: Any
) -> None:
    queued, failed, other_failed = make_deployments(pg, Kind.profile, count=3)
    force_status(pg, failed, Status.failed)
    force_status(pg, other_failed, Status.failed)

    code, out, _ = mdmq("cancel", queued, failed, "--yes", "--json")
    assert (code, out["applied"], out["refused"]) == (0, [queued], [{"id": failed, "reason": "not_allowed"}])

    code, _, _ = mdmq("retry", "--status", "Failed", "--org", "acme", answer="n\n")
    assert code == 65, "declined at the prompt: nothing done"
    assert status_of(pg, failed) is Status.failed

    code, out, _ = mdmq("retry", "--status", "Failed", "--org", "acme", "--json", answer="y\n")
    assert code == 0
    assert sorted(out["applied"]) == sorted([failed, other_failed])
    assert status_of(pg, failed) is Status.queued
    assert mdmq("retry", queued, "--status", "Failed")[0] == 64, "ids or a filter, not both"


def test_a_database_without_the_schema_is_one_line_and_exit_3(tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    result = run_mdmq("held", env={"MDMQ_DATABASE_URL": empty}, timeout_s=60)
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "mdmq: the database refused: no such table: deployment; run `mdmq db upgrade` first"
    ]


def test_a_retry_of_more_than_a_chunk_applies_them_all(
    pg: Engine, make_deployments: MakeDeployments, mdmq: Any
) -> None:
    ids = make_deployments(pg, Kind.app, count=2_500)  # three transactions of at most 1,000
    with pg.begin() as connection:
        connection.execute(sa.update(DEPLOYMENT).values(status=Status.failed.value))

    code, out, err = mdmq("retry", "--status", "Failed", "--org", "acme", "--yes", "--json")

    assert code == 0, err
    assert sorted(out["applied"]) == sorted(ids)
    with pg.connect() as connection:
        statuses = connection.execute(sa.select(DEPLOYMENT.c.status).distinct()).scalars().all()
    assert statuses == [Status.queued.value]


def test_mdmq_api_serves_as_the_procfile_runs_it(pg: Engine, postgres_url: str) -> None:
    """`mdmq api` in a process of its own, as the Procfile's `web` starts it."""
    port, metrics_port = free_ports(2)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")}
    environment["MDMQ_DATABASE_URL"] = postgres_url
    environment["MDMQ_API_METRICS_PORT"] = str(metrics_port)
    command = [sys.executable, "-c", "from cli.main import main; main()", "api", "--port", str(port)]
    with subprocess.Popen(command, env=environment, stderr=subprocess.DEVNULL) as server:
        try:

            def answers() -> bool:
                try:
                    return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
                except requests.ConnectionError:
                    return False

            wait_until(answers, 30, "mdmq api to answer")
            ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert ready.json() == {"status": True, "data": {"database": "up", "broker": "up"}}
    assert "web: ./dev run mdmq api" in (Path(__file__).parents[2] / "Procfile").read_text()


def test_mdmq_worker_consumes_what_is_sent_and_stops_on_sigterm(
    pg: Engine, postgres_url: str, make_deployments: MakeDeployments
) -> None:
    """`mdmq worker` as the Procfile's `worker` runs it, on Redis: a report sent reaches the database."""
    require(REDIS_URL, "Redis")
    redis.Redis.from_url(REDIS_URL).flushdb()
    [deployment_id] = make_deployments(pg, Kind.profile)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")}
    environment |= {"MDMQ_DATABASE_URL": postgres_url, "MDMQ_BROKER_URL": REDIS_URL}
    command = [sys.executable, "-c", "from cli.main import main; main()", "worker", "--processes", "1"]
    sender = App(Settings(database_url=postgres_url, broker_url=REDIS_URL))
    with subprocess.Popen(command, env=environment, stderr=subprocess.DEVNULL) as worker:
        try:
            declare_actors(sender).record_report.send(
                deployment_id, "fetched", device_id=device_of(pg, deployment_id), organization_id="acme"
            )
            wait_until(lambda: status_of(pg, deployment_id) is Status.waiting, 60, "the worker to apply it")
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=60)
            sender.close()
    assert code == 0
