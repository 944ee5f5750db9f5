"""Observability end to end: a rollout on PostgreSQL and Redis with real worker processes, the scheduler and
the API beside it, JSON logs and Sentry on. Afterwards every process's /metrics holds every series name the
Grafana dashboard and the alert rules use, and no secret is in any log line or Sentry envelope."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
import requests
from sqlalchemy.engine import Engine

from config.settings import LogFormat, Settings
from sandbox.rollout import Rollout
from sandbox.tls import ServerTls, issue_server_certificate, make_ca
from tests.deploy.names import dashboard_metric_names, rule_metric_names
from tests.helpers import answers, free_ports, run_mdmq, scraped, wait_until
from tests.sentry import SentryServer
from tests.services import REDIS_URL, require

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "mdmq.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
pytestmark = pytest.mark.timeout(600)


def used_series() -> set[str]:
    """What the dashboard and the alert rules read from mdmq's processes: not `up`, which Prometheus makes,
    nor the series the recording rules make (`level:metric:operations`)."""
    names = dashboard_metric_names(DASHBOARD) | rule_metric_names(ALERTS)
    return {name for name in names if name.startswith(("mdmq_", "dramatiq_"))}


def series_names(url: str) -> set[str]:
    return {key.partition("{")[0] for key in scraped(url)}


def test_every_series_the_dashboard_and_alerts_use_is_served_and_no_secret_is_logged_or_sent(
    pg: Engine, postgres_url: str, tmp_path: Path
) -> None:
    require(REDIS_URL, "Redis")
    redis.Redis.from_url(REDIS_URL).flushdb()
    assert len(used_series()) >= 15, "the dashboard and the rules are read"
    ca = make_ca(days=400)
    tls = ServerTls(ca, issue_server_certificate(ca, days=5))  # the emulators' certificate: 5 days left
    (tmp_path / "ca.pem").write_bytes(tls.ca_pem)
    worker_port, scheduler_port, api_port, api_metrics_port = free_ports(4)
    logs = {name: tmp_path / f"{name}.log" for name in ("workers", "scheduler", "api")}
    bin_dir = Path(sys.executable).parent

    with SentryServer() as sentry, ExitStack() as stack:
        settings = Settings(
            database_url=postgres_url,
            broker_url=REDIS_URL,
            log_format=LogFormat.json,
            sentry_dsn=sentry.dsn,
            push_ca_file=str(tmp_path / "ca.pem"),
            metrics_host="127.0.0.1",
            api_metrics_port=api_metrics_port,
            worker_metrics_port=worker_port,
            scheduler_metrics_port=scheduler_port,
            metrics_dir=str(tmp_path / "worker-metrics"),
            sweep_interval_s=1,
        )
        with Rollout(settings, devices=120, seed=31, tls=tls, worker_log=logs["workers"]) as rollout:
            environment = rollout.environment() | {
                "MDMQ_WATCH_ENDPOINTS": f"127.0.0.1:{rollout.sandbox.ports['apns']}"
            }
            token = run_mdmq(
                "token", "create", "--org", rollout.organization_id, "--create-org",
                "--permission", "mdm.deployment.get", env={"MDMQ_DATABASE_URL": postgres_url}, timeout_s=60,
            ).stdout.strip()  # fmt: skip
            processes = [
                subprocess.Popen(command, env=environment, stderr=stack.enter_context(logs[name].open("wb")))
                for name, command in (
                    ("scheduler", [str(bin_dir / "mdmq"), "scheduler"]),
                    ("api", [str(bin_dir / "mdmq"), "api", "--port", str(api_port)]),
                )
            ]
            try:
                ids = rollout.start()
                state = rollout.wait(300)
                result = rollout.result(state, 0)
                assert result.ok, result.as_json()

                api = f"http://127.0.0.1:{api_port}"
                wait_until(lambda: answers(api + "/healthz"), 60, "the API")
                answer = requests.get(
                    f"{api}/v1/organizations/{rollout.organization_id}/deployments/{ids[0]}",
                    headers={"authorization": f"Bearer {token}"},
                    timeout=10,
                )
                assert answer.status_code == 200, answer.text
                wrong = requests.get(api + "/healthz", headers={"authorization": "Bearer nope"}, timeout=10)
                assert wrong.status_code == 200
                scheduler = f"http://127.0.0.1:{scheduler_port}/metrics"
                endpoint = f'name="127.0.0.1:{rollout.sandbox.ports["apns"]}",source="tls_endpoint"'
                wait_until(
                    lambda: f"mdmq_certificate_expiry_timestamp_seconds{{{endpoint}}}" in scraped(scheduler),
                    60,
                    "the certificate watch's first pass",
                )
                wait_until(lambda: "mdmq_queue_messages" in series_names(scheduler), 60, "the gauges job")
                served = (
                    series_names(f"http://127.0.0.1:{worker_port}/metrics")
                    | series_names(scheduler)
                    | series_names(f"http://127.0.0.1:{api_metrics_port}/metrics")
                )
            finally:
                for process in processes:
                    process.send_signal(signal.SIGTERM)
                for process in processes:
                    process.wait(timeout=60)
            secrets = _secrets(rollout, token)
            magic = [d.push_magic for d in rollout.fleet.devices if d.push_magic]
            devices = len(rollout.fleet.devices)
        envelopes = list(sentry.envelopes)
        check_ins, events = sentry.items("check_in"), sentry.items("event")

    missing = used_series() - served
    assert not missing, f"used by the dashboard or the alerts, served by no process: {sorted(missing)}"

    texts = {name: path.read_text(errors="replace") for name, path in logs.items()} | {
        f"sentry envelope {i}": body for i, body in enumerate(envelopes)
    }
    assert magic, "Apple devices among them"
    assert len(secrets) >= devices + len(magic) + 3, "every token, every push magic, every key, the API token"
    leaked = {(where, secret[:12]) for where, text in texts.items() for secret in secrets if secret in text}
    assert not leaked, f"secrets in the logs or sent to Sentry: {sorted(leaked)}"
    assert not [w for w, text in texts.items() if re.search(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ", text)], "no JWT"

    assert {c["monitor_slug"] for c in check_ins} >= {"mdmq-scheduler-gauges", "mdmq-scheduler-certificates"}
    assert any("127.0.0.1" in json.dumps(event) and "expires" in json.dumps(event) for event in events), (
        "the 5-day certificate crossed the 7-day threshold: one Sentry message"
    )

    # Production lines are JSON, Dramatiq's own included, and a dispatch's lines say what they are about.
    lines = [
        json.loads(line) for name in ("scheduler", "api", "workers") for line in texts[name].splitlines()
    ]
    assert lines, "the scheduler, the API and the workers log"
    assert any(line["logger"].startswith("dramatiq.") for line in lines), "Dramatiq's lines are JSON too"
    answered = [line for line in lines if "pushes answered" in line["message"]]
    assert answered, "each group of pushes is logged"
    for line in answered:
        assert line["action"] == "dispatch"
        assert line["organization"] == rollout.organization_id
        assert line["provider"] in ("apns", "fcm", "aosp")
        assert line.get("deployment_id") or line.get("deployment_ids")


def _secrets(rollout: Rollout, token: str) -> set[str]:
    found = {token}
    for device in rollout.fleet.devices:
        found.add(device.token)
        if device.push_magic:
            found.add(device.push_magic)
    for credential in rollout.keys.values():
        secret = credential.secret
        if "PRIVATE KEY" in secret or secret.startswith("{"):
            pem = json.loads(secret)["private_key"] if secret.startswith("{") else secret
            found |= {line for line in pem.splitlines() if len(line) >= 40}  # the key's base64 lines
        else:
            found.add(secret)  # an AOSP API key
    return found
