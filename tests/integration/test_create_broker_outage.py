"""Creates while the broker goes down: 100 concurrent `POST …/deployments`, each with an `Idempotency-Key`
and retried by its client with the same key on any failure, against the API served by uvicorn, with real
`dramatiq` worker processes and the scheduler process (its relay), on a Redis of the test's own that is
stopped after the 30th answer and started again once every create was answered.

No answer is a 500 (the rows are committed: 202 with the ids), no device gets two deployments, and every
deployment is pushed (accepted by the sandbox's emulator: it has a receipt) within 60 s of the broker's
restart: what the broker never took is the relay's (MDMQ_RELAY_GRACE_S, 30 s, run every
MDMQ_SWEEP_INTERVAL_S, 10 s); what Redis held when it stopped is lost with it (nothing kept on disk) and is
the re-push sweep's, after MDMQ_REDELIVER_AFTER_S (20 s here).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from config.settings import Settings
from models.enums import Provider
from models.store import ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.tokens import create_token
from sandbox.credentials import (
    EMULATED_APNS_ENVIRONMENT,
    DemoCredential,
    register_credentials,
    store_credentials,
)
from sandbox.fleet import Behaviour, Fleet
from sandbox.processes import WorkerProcesses, settings_environment
from sandbox.registry import DeviceRegistry
from sandbox.server import SandboxThread
from sandbox.tls import ServerTls, make_ca
from tests.helpers import free_ports, wait_until
from tests.integration.api.conftest import serving
from tests.services import OwnRedis
from workers.app import App

pytestmark = pytest.mark.timeout(300)

ORG = "acme"
CREATES = 100
STOP_AFTER = 30  # answers before the broker stops; the other creates meet it stopped, or stopping
PUSHED_WITHIN_S = 60.0
REDELIVER_S = 20.0
ATTEMPTS = 20


class Creates:
    """The clients: one create per device, each with a key of its own, retried with that key on any failure;
    every answer's status is counted, retries' included. The answer that makes `STOP_AFTER` stops the
    broker, from that client's thread, while the others are in flight."""

    def __init__(self, base_url: str, token: str, redis_server: OwnRedis) -> None:
        self.url = f"{base_url}/v1/organizations/{ORG}/deployments"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.redis_server = redis_server
        self.statuses: Counter[int] = Counter()
        self.answered = 0
        self.answered_while_down = 0
        self._lock = threading.Lock()
        self.http = httpx.Client(limits=httpx.Limits(max_connections=20), timeout=30)

    def create(self, device_id: str) -> list[str]:
        body = {"deployments": [{"deviceId": device_id, "kind": "profile"}]}
        headers = self.headers | {"Idempotency-Key": str(uuid.uuid4())}
        for _ in range(ATTEMPTS):
            try:
                response = self.http.post(self.url, json=body, headers=headers)
            except httpx.TransportError:
                continue
            self._count(response.status_code)
            if response.status_code == 202:
                return list(response.json()["data"]["ids"])
            threading.Event().wait(float(response.headers.get("Retry-After", "0.2")))  # a client's backoff
        raise AssertionError(f"no 202 for device {device_id} in {ATTEMPTS} attempts: {self.statuses}")

    def _count(self, status: int) -> None:
        with self._lock:
            self.statuses[status] += 1
            self.answered += status == 202
            # A 202 answered after the broker was stopped: committed work, answered all the same.
            self.answered_while_down += status == 202 and self.redis_server.stopped
            if self.answered == STOP_AFTER:
                self.redis_server.stop()


@pytest.fixture
def redis_server() -> Iterator[OwnRedis]:
    with OwnRedis(free_ports(1)[0]) as server:
        yield server


def test_creates_while_the_broker_is_down_answer_202_create_once_and_are_pushed_after_its_restart(
    pg: Engine, postgres_url: str, tmp_path: Path, redis_server: OwnRedis
) -> None:
    registry = DeviceRegistry()
    push_ca = make_ca("mdmq test push CA")
    registry.add_apns_client_ca(push_ca.certificate)
    keys = register_credentials(registry, push_ca=push_ca)
    # Offline devices: the provider accepts every push (a receipt), and none checks in to move it on.
    fleet = Fleet(
        registry,
        seed=23,
        size=CREATES,
        mix={Behaviour.offline: 1.0},
        apns_environment=EMULATED_APNS_ENVIRONMENT,
    )
    tls = ServerTls.generate()
    ca_file = tmp_path / "emulators-ca.pem"
    ca_file.write_bytes(tls.ca_pem)
    with ExitStack() as stack:
        stack.callback(fleet.close)
        sandbox = stack.enter_context(SandboxThread(registry, tls=tls))
        settings = _settings(postgres_url, redis_server, str(ca_file), sandbox.settings())
        app = App(settings)
        stack.callback(app.close)
        token = _enroll(app, fleet, keys)
        stack.enter_context(WorkerProcesses(settings, 1, threads=4, log=tmp_path / "worker.log"))
        stack.enter_context(_scheduler(settings, tmp_path / "scheduler.log"))
        base_url = stack.enter_context(serving(app))

        creates = Creates(base_url, token, redis_server)
        stack.callback(creates.http.close)
        with ThreadPoolExecutor(20) as pool:
            ids = list(pool.map(creates.create, [d.id for d in fleet.devices]))
        redis_server.start()
        restarted = time.monotonic()
        wait_until(lambda: _pushed(pg) == CREATES, PUSHED_WITHIN_S, f"{CREATES} pushes after the restart")
        print(f"every deployment pushed {time.monotonic() - restarted:.1f} s after the broker's restart")

    assert creates.statuses[500] == 0, creates.statuses
    assert creates.answered_while_down > 0, "some creates were answered 202 while the broker was down"
    assert len({i for answer in ids for i in answer}) == CREATES
    assert _deployments_per_device(pg) == {1}, "no device got a second deployment"


def _settings(postgres_url: str, redis_server: OwnRedis, ca_file: str, endpoints: dict[str, Any]) -> Settings:
    api, worker, scheduler = free_ports(3)
    return Settings(
        database_url=postgres_url,
        broker_url=redis_server.url,
        push_ca_file=ca_file,
        redeliver_after_s=REDELIVER_S,
        metrics_host="127.0.0.1",
        api_metrics_port=api,
        worker_metrics_port=worker,
        scheduler_metrics_port=scheduler,
        database_pool_size=24,
        **endpoints,
    )


def _enroll(app: App, fleet: Fleet, keys: Mapping[Provider, DemoCredential]) -> str:
    """The organization, its credentials and devices; a token that may create."""
    with app.session() as s:
        ensure_organization(s, organization_id=ORG)
        store_credentials(s, ORG, keys)
        devices = [NewDevice(d.platform, d.token, push_magic=d.push_magic, id=d.id) for d in fleet.devices]
        add_devices(s, organization_id=ORG, devices=devices)
        return create_token(s, organization_id=ORG, permissions=["mdm.deployment.create"])[1]


@contextmanager
def _scheduler(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m scheduler`, as the Procfile runs it, with the test's settings."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "scheduler"], env=settings_environment(settings), stderr=output
        )
        try:
            yield process
        finally:
            process.terminate()
            process.wait(timeout=60)


def _pushed(pg: Engine) -> int:
    """Deployments whose push the emulator accepted: each has the receipt of that push."""
    with pg.connect() as connection:
        statement = sa.text("SELECT count(*) FROM deployment WHERE receipt_id IS NOT NULL")
        return int(connection.execute(statement).scalar_one())


def _deployments_per_device(pg: Engine) -> set[int]:
    with pg.connect() as connection:
        statement = sa.text("SELECT count(*) FROM deployment GROUP BY device_id")
        return {int(n) for n in connection.execute(statement).scalars()}
