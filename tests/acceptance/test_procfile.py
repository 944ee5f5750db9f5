"""`honcho start` runs the Procfile as it is, in a checkout set up by `./dev setup` with nothing activated,
on an empty PostgreSQL database and Redis: the release step migrates while the other three wait for it, and
then each serves its /metrics and does its work."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from config.settings import Settings
from models.migrations.runner import is_current
from models.secrets import KeyRing
from tests.helpers import answers, free_ports, scraped, wait_until
from tests.services import REDIS_URL, new_postgres_database, require
from workers.actors import declare_actors
from workers.app import App

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database with no tables at all: the Procfile's release must create them."""
    with new_postgres_database("mdmq_procfile") as url:
        yield url


def procfile_names() -> list[str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return [line.split(":", 1)[0] for line in lines if line.strip() and not line.startswith("#")]


def test_honcho_start_brings_up_the_procfile_and_every_process_serves_metrics(
    empty_database: str, tmp_path: Path
) -> None:
    require(REDIS_URL, "Redis")
    redis.Redis.from_url(REDIS_URL).flushdb()
    names = procfile_names()
    assert set(names) == {"release", "web", "worker", "scheduler"}
    web_port, worker_port, scheduler_port, web_metrics_port = free_ports(4)
    base_port = web_port - 100 * names.index("web")  # honcho gives the i-th process base + 100 * i
    bin_dir = str(Path(sys.executable).parent)
    # As after `./dev setup` in a fresh clone: the virtual environment is not activated, nor on PATH.
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != Path(bin_dir)
    )
    assert shutil.which("mdmq", path=path) is None, "no mdmq on PATH but the virtual environment's"
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MDMQ_", "VIRTUAL_ENV"))} | {
        "PATH": path,
        "MDMQ_DATABASE_URL": empty_database,
        "MDMQ_BROKER_URL": REDIS_URL,
        "MDMQ_ENVIRONMENT": "production",
        "MDMQ_SECRET_KEY": KeyRing.generate_key(),
        "MDMQ_METRICS_HOST": "127.0.0.1",
        "MDMQ_API_METRICS_PORT": str(web_metrics_port),
        "MDMQ_WORKER_METRICS_PORT": str(worker_port),
        "MDMQ_SCHEDULER_METRICS_PORT": str(scheduler_port),
        "MDMQ_METRICS_DIR": str(tmp_path / "worker-metrics"),
        "MDMQ_SWEEP_INTERVAL_S": "1",
        "WORKER_PROCESSES": "1",
        "WORKER_THREADS": "2",
    }
    command = [
        str(Path(bin_dir) / "honcho"), "start", "--no-colour",
        "-f", str(ROOT / "Procfile"), "-d", str(ROOT), "-p", str(base_port),
    ]  # fmt: skip
    with (tmp_path / "honcho.log").open("wb") as log:
        honcho = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    web = f"http://127.0.0.1:{web_port}"
    worker = f"http://127.0.0.1:{worker_port}/metrics"
    scheduler = f"http://127.0.0.1:{scheduler_port}/metrics"
    try:
        wait_until(lambda: honcho.poll() is not None or answers(web + "/healthz"), 120, f"the API on {web}")
        assert honcho.poll() is None, (tmp_path / "honcho.log").read_text()
        assert is_current(empty_database), "the release step migrated the database"
        assert requests.get(web + "/readyz", timeout=10).json()["data"] == {"database": "up", "broker": "up"}
        wait_until(lambda: answers(scheduler) and answers(worker), 60, "the scheduler's and workers' metrics")
        # Counters with known labels are at 0 from the first scrape, so that rate() sees their first count.
        first = scraped(scheduler) | scraped(worker)
        assert first['mdmq_scheduler_job_runs_total{outcome="error",scheduler_job="relay"}'] == 0
        assert first['mdmq_transitions_total{kind="security_action",status="Failed"}'] == 0
        assert (
            first['mdmq_push_requests_total{outcome="dead_token",provider="apns",reason="BadDeviceToken"}']
            == 0
        )
        assert first['mdmq_push_requests_total{outcome="accepted",provider="fcm",reason="none"}'] == 0
        wait_until(lambda: scraped(scheduler).get("mdmq_scheduler_leader") == 1, 60, "the scheduler to lead")
        wait_until(
            lambda: 'mdmq_deployments{kind="profile",status="Queued"}' in scraped(scheduler), 30, "gauges"
        )

        # One message through Redis to the worker processes, and their exposition server counts it.
        app = App(Settings(database_url=empty_database, broker_url=REDIS_URL))
        try:
            declare_actors(app).dispatch_bulk.send([])
        finally:
            app.close()
        handled = 'dramatiq_messages_total{actor_name="dispatch_bulk",queue_name="bulk"}'
        wait_until(lambda: scraped(worker).get(handled) == 1, 60, "the worker to handle the message")
        assert 'mdmq_http_requests_total{method="GET",route="/healthz",status="200"}' in scraped(
            f"http://127.0.0.1:{web_metrics_port}/metrics"
        )
        given = requests.get(web + "/healthz", headers={"X-Request-ID": "lb-7f3a.2"}, timeout=10)
        assert given.headers["X-Request-ID"] == "lb-7f3a.2", "a sane request id is kept"
        forged = requests.get(web + "/healthz", headers={"X-Request-ID": 'x", "level": "x'}, timeout=10)
        assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["X-Request-ID"]), "another is replaced"
    finally:
        honcho.send_signal(signal.SIGTERM)
        honcho.wait(timeout=90)
    output = (tmp_path / "honcho.log").read_text()
    for name in ("release", "web", "worker", "scheduler"):
        assert f"{name}.1" in output, f"honcho ran {name}"
    assert not any(answers(url) for url in (web + "/healthz", worker, scheduler)), "all stopped"

    # In production every line of every process is one JSON object: Dramatiq's and uvicorn's included.
    lines = process_lines(output)
    assert {name for name, _ in lines} == {"release", "web", "worker", "scheduler"}
    not_json = [(name, line) for name, line in lines if not is_json_object(line)]
    assert not not_json, f"lines that are not JSON: {not_json[:5]}"
    logged = [(name, json.loads(line)) for name, line in lines]
    assert any(n == "worker" and line["logger"].startswith("dramatiq.WorkerProcess") for n, line in logged)
    assert any(n == "worker" and line["logger"].startswith("dramatiq.MainProcess") for n, line in logged)
    assert any(n == "web" and line["logger"].startswith("uvicorn.") for n, line in logged)
    accesses = [line for n, line in logged if n == "web" and line["logger"] == "api.access_log"]
    kept = [line for line in accesses if line["request_id"] == "lb-7f3a.2"]
    assert [(line["path"], line["status"]) for line in kept] == [("/healthz", 200)]
    assert all(isinstance(line["latency_ms"], float) for line in accesses)
    assert all(line["request_id"] for line in accesses)


# honcho's prefix: a time, the process and its number, padding, a bar; `system` is honcho's own.
_HONCHO_LINE = re.compile(r"\d\d:\d\d:\d\d (\w+)\.\d+ +\| (.*)")


def process_lines(output: str) -> list[tuple[str, str]]:
    """What each process wrote, stdout and stderr, by process name; honcho's own lines left out."""
    lines = []
    for raw in output.splitlines():
        matched = _HONCHO_LINE.fullmatch(raw)
        if matched is None:
            assert re.match(r"\d\d:\d\d:\d\d system +\| ", raw), f"not a process line: {raw!r}"
            continue
        lines.append((matched[1], matched[2]))
    return lines


def is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
