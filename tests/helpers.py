"""Test-only helpers: reaching under the store to put a deployment in a status, running `mdmq`, sessions,
waiting for a condition."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, func, select

from config.settings import Settings
from models.statuses import Status
from models.store import deployment_history, get_deployment
from models.tables import DeploymentEvent
from sandbox import Sandbox
from workers.providers.endpoints import ProviderEndpoints


def force_status(engine: Engine, deployment_id: str, status: Status) -> None:
    """Set the status without a transition (and without an event), to start a test from it."""
    with engine.begin() as connection:
        table = SQLModel.metadata.tables["deployment"]
        connection.execute(sa.update(table).where(table.c.id == deployment_id).values(status=status.value))


def status_of(engine: Engine, deployment_id: str) -> Status:
    with Session(engine) as session:
        deployment = get_deployment(session, deployment_id=deployment_id)
        assert deployment is not None
        return deployment.status


def device_of(engine: Engine, deployment_id: str) -> str:
    """The device the deployment is for: the one whose reports it takes."""
    with Session(engine) as session:
        deployment = get_deployment(session, deployment_id=deployment_id)
        assert deployment is not None
        return deployment.device_id


def events_of(engine: Engine, deployment_id: str) -> list[DeploymentEvent]:
    with Session(engine) as session:
        return deployment_history(session, deployment_id=deployment_id)


def event_count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count(col(DeploymentEvent.id)))).one()


def mdmq_json(database_url: str) -> Callable[..., tuple[int, Any, str]]:
    """`mdmq ARGS` on `database_url`: its exit code, its output (parsed when `--json` is asked and it
    printed something) and its standard error."""

    def run(*args: str) -> tuple[int, Any, str]:
        result = run_mdmq(*args, env={"MDMQ_DATABASE_URL": database_url}, timeout_s=120)
        out = json.loads(result.stdout) if "--json" in args and result.stdout.strip() else result.stdout
        return result.returncode, out, result.stderr

    return run


def run_mdmq(
    *args: str, env: dict[str, str], timeout_s: float, cwd: Path | None = None, answer: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The `mdmq` command through its real entry point, with `env` as its only MDMQ_ settings; `answer` is
    typed at its prompts."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")}
    command = [sys.executable, "-c", "from cli.main import main; main()", *args]
    return subprocess.run(
        command,
        env=clean | env,
        cwd=cwd,
        input=answer,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def sessions(engine: Engine) -> Callable[[], AbstractContextManager[Session]]:
    """A session factory as `App.session` is: one transaction per block, committed when it ends."""

    @contextmanager
    def session() -> Iterator[Session]:
        with Session(engine, expire_on_commit=False) as s, s.begin():
            yield s

    return session


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        threading.Event().wait(0.05)


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now, for processes a test starts (held open together, so all distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def scraped(url: str) -> dict[str, float]:
    """What a /metrics endpoint serves: `name` or `name{label="value",...}` -> value; {} while it does not
    answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def answers(url: str) -> bool:
    """Whether `url` answers 200 now (False while nothing listens there)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def sandbox_settings(sandbox: Sandbox, directory: Path, **settings: Any) -> Settings:
    """Settings that point mdmq at a running sandbox (each APNs environment on its own listener), trusting
    its CA through a file written in `directory`; `settings` adds to them (the database, the broker...)."""
    ca_file = None
    if sandbox.tls is not None:
        ca_file = directory / "sandbox-ca.pem"
        ca_file.write_bytes(sandbox.tls.ca_pem)
    return Settings(**sandbox.settings(), push_ca_file=str(ca_file) if ca_file else None, **settings)


@contextmanager
def worker_process_settings(
    sandbox: Sandbox, directory: Path, *, database_url: str, **settings: Any
) -> Iterator[Settings]:
    """`sandbox_settings` for real `dramatiq` worker processes of one test: the suite's Redis under a key
    prefix of the test's own (its keys deleted afterwards), and a metrics port and directory of their own."""
    from tests.services import REDIS_URL, require

    require(REDIS_URL, "Redis")
    namespace = f"mdmq-test-{uuid.uuid4().hex[:8]}"
    yield sandbox_settings(
        sandbox,
        directory,
        database_url=database_url,
        broker_url=REDIS_URL,
        broker_namespace=namespace,
        metrics_host="127.0.0.1",
        worker_metrics_port=free_ports(1)[0],
        metrics_dir=str(directory / "metrics"),
        **settings,
    )
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)
    finally:
        client.close()


def sandbox_endpoints(sandbox: Sandbox) -> ProviderEndpoints:
    """mdmq's endpoints for a running sandbox: each APNs environment on its own listener, FCM with its OAuth
    endpoint, AOSP; trusting the sandbox's CA when it serves TLS."""
    return ProviderEndpoints(
        apns_production=sandbox.apns_url,
        apns_sandbox=sandbox.apns_sandbox_url,
        fcm=sandbox.fcm_url,
        oauth_token=f"{sandbox.fcm_url}/token",
        aosp=sandbox.aosp_url,
        ca_pem=sandbox.tls.ca_pem.decode("ascii") if sandbox.tls else None,
    )
