"""A worker process SIGKILLed mid-push, on Redis and PostgreSQL with real `dramatiq` worker processes: the
messages it had taken show as in flight, then as orphaned once its heartbeat is overdue, in the scheduler's
`mdmq_queue_messages` gauge (never as ready, never as nothing), and the next worker pushes them."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from config.settings import Settings
from models.enums import CredentialKind, Platform, Provider, PushEnvironment
from models.statuses import Kind
from models.store import NewDeployment, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.tables import Deployment
from models.types import utcnow
from sandbox import DeviceRegistry, FaultConfig, Latency, SandboxThread
from sandbox.processes import WorkerProcesses
from sandbox.tls import issue_mdm_push_certificate, mdm_topic
from scheduler.gauges import gauges_job
from tests.helpers import wait_until, worker_process_settings
from workers.actors import Actors, declare_actors
from workers.app import App
from workers.services.credentials import store_credential

pytestmark = pytest.mark.timeout(300)

ORG = "acme"
DEVICES = 3
PUSH_TAKES_MS = 15_000  # each APNs answer: long enough for the pushes to be in flight when the worker dies


@dataclass(frozen=True)
class World:
    settings: Settings
    devices: list[str]


@pytest.fixture
def world(pg: Engine, postgres_url: str, tmp_path: Path) -> Iterator[World]:
    registry = DeviceRegistry()
    certificate = issue_mdm_push_certificate(registry, topic=mdm_topic(), days=365)
    slow = FaultConfig(latency=Latency.fixed(PUSH_TAKES_MS))
    with (
        SandboxThread(registry, tls=True, apns_faults=slow) as sandbox,
        worker_process_settings(
            sandbox, tmp_path, database_url=postgres_url, broker_heartbeat_timeout_s=3, dispatch_chunk_size=1
        ) as settings,
    ):
        app = App(settings)
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
            tokens = [secrets.token_hex(32) for _ in range(DEVICES)]
            for token in tokens:
                registry.add_apns_device(token, topic=certificate.topic)
            devices = add_devices(
                s, organization_id=ORG, devices=[NewDevice(Platform.ios, t, push_magic="m") for t in tokens]
            )
        app.close()
        yield World(settings, devices)


def _gauge(actors: Actors) -> dict[str, float]:
    """The scheduler's `mdmq_queue_messages` as it exports it, summed over the queues, by state."""
    gauges_job(actors, utcnow())
    by_state: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name == "mdmq_queue_messages":
            for sample in metric.samples:
                state = sample.labels["state"]
                by_state[state] = by_state.get(state, 0) + sample.value
    return by_state


def _pushed(engine: Engine) -> int:
    with Session(engine) as s:
        counted = select(func.count()).select_from(Deployment).where(col(Deployment.receipt_id).is_not(None))
        return s.exec(counted).one()


def test_a_killed_workers_messages_show_in_the_gauge_until_the_next_worker_pushes_them(
    world: World,
) -> None:
    settings, devices = world.settings, world.devices
    actors = declare_actors(App(settings))
    try:
        with WorkerProcesses(settings, processes=1, threads=2, restart_after_s=3_600) as workers:
            actors.create(ORG, [NewDeployment(d, Kind.profile) for d in devices])
            wait_until(lambda: _gauge(actors).get("in_flight") == DEVICES, 60, "the worker to take all")
            assert _pushed(actors.app.engine) == 0, "the pushes are still in flight"
            os.kill(workers.worker_pids()[0], signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(lambda: workers.children() == set(), 60, "Dramatiq to stop its command")

        wait_until(lambda: _gauge(actors).get("orphaned") == DEVICES, 60, "the dead worker's to show")
        shown = _gauge(actors)
        assert (shown["ready"], shown["in_flight"]) == (0, 0), shown

        with WorkerProcesses(settings, processes=1, threads=2, restart_after_s=3_600):
            wait_until(lambda: _gauge(actors).get("orphaned") == 0, 120, "the messages to go back")
            back_s = time.monotonic() - killed_at
            wait_until(lambda: _pushed(actors.app.engine) == DEVICES, 120, "the next worker to push them")
        print(f"a killed worker's messages were back on their queue {back_s:.1f} s after the kill")
    finally:
        actors.app.close()
