"""A lock never waits for a worker thread to finish a rollout's chunk, nor for a stopping command's bulk
process to finish one: real `dramatiq` worker processes on Redis and PostgreSQL, the bulk queue's only
thread held by a slow APNs answer, a lock for an AOSP device.

With the urgent lane (`MDMQ_WORKER_URGENT_THREADS`: a worker process of its own beside the bulk one) the
lock is pushed while the chunk's push is still out; with none, the same lock waits until the chunk's thread
is free — the case that shows the lane is what makes the difference."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from config.settings import Settings
from models.enums import CredentialKind, Platform, Provider, PushEnvironment
from models.statuses import Kind
from models.store import NewDeployment, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.organizations import set_fair_share
from models.tables import Deployment
from sandbox import DeviceRegistry, FaultConfig, Latency, SandboxThread
from sandbox.processes import WorkerProcesses
from sandbox.tls import issue_mdm_push_certificate, mdm_topic
from tests.helpers import wait_until, worker_process_settings
from workers.actors import declare_actors
from workers.app import App
from workers.queues import worker_beats
from workers.services.credentials import store_credential

pytestmark = pytest.mark.timeout(240)

ROLLOUT_ORG, LOST_PHONE_ORG = "acme", "globex"
APNS_TAKES_MS = 8_000  # each APNs answer: the bulk thread is busy this long with its chunk


@dataclass(frozen=True)
class World:
    settings: Settings
    rollout_device: str
    lost_phone: str


@pytest.fixture
def world(pg: Engine, postgres_url: str, tmp_path: Path) -> Iterator[World]:
    registry = DeviceRegistry()
    certificate = issue_mdm_push_certificate(registry, topic=mdm_topic(), days=365)
    aosp_key = secrets.token_hex(16)
    registry.add_aosp_api_key(aosp_key)
    apns_token, aosp_token = secrets.token_hex(32), secrets.token_hex(11)
    registry.add_apns_device(apns_token, topic=certificate.topic)
    registry.add_aosp_device(aosp_token)
    slow = FaultConfig(latency=Latency.fixed(APNS_TAKES_MS))
    with (
        SandboxThread(registry, tls=True, apns_faults=slow) as sandbox,
        worker_process_settings(
            sandbox, tmp_path, database_url=postgres_url, dispatch_chunk_size=1
        ) as settings,
    ):
        app = App(settings)
        with app.session() as s:
            for org, provider, kind, secret in (
                (ROLLOUT_ORG, Provider.apns, CredentialKind.apns_certificate, certificate.pem_bundle),
                (LOST_PHONE_ORG, Provider.aosp, CredentialKind.aosp_api_key, aosp_key),
            ):
                ensure_organization(s, organization_id=org)
                store_credential(
                    s,
                    organization_id=org,
                    provider=provider,
                    kind=kind,
                    secret=secret,
                    environment=PushEnvironment.production,
                )
            [rollout_device] = add_devices(
                s, organization_id=ROLLOUT_ORG, devices=[NewDevice(Platform.ios, apns_token, push_magic="m")]
            )
            [lost_phone] = add_devices(
                s, organization_id=LOST_PHONE_ORG, devices=[NewDevice(Platform.aosp, aosp_token)]
            )
        app.close()
        yield World(settings, rollout_device, lost_phone)


def _pushed(engine: Engine, deployment_id: str) -> bool:
    with Session(engine) as s:
        row = s.exec(select(Deployment.receipt_id).where(col(Deployment.id) == deployment_id)).one()
        return row is not None


def _named_workers(app: App) -> list[str]:
    """The worker processes named on the broker, with a fresh heartbeat."""
    now_ms = int(time.time() * 1000)
    return sorted(b.name for b in worker_beats(app.broker, now_ms=now_ms, within_ms=10_000) if b.name)


def _claimed(engine: Engine, deployment_id: str) -> bool:
    with Session(engine) as s:
        count = s.exec(select(Deployment.attempt_count).where(col(Deployment.id) == deployment_id)).one()
        return count > 0


@pytest.mark.parametrize("urgent_threads", [1, 0])
def test_a_lock_is_pushed_while_the_only_bulk_thread_pushes_a_chunk(
    world: World, urgent_threads: int
) -> None:
    settings = world.settings.model_copy(update={"worker_urgent_threads": urgent_threads})
    actors = declare_actors(App(settings))
    engine = actors.app.engine
    try:
        with WorkerProcesses(settings, processes=1, threads=1, restart_after_s=3_600) as workers:
            # One bulk process, and (with urgent threads) the urgent lane's process beside it.
            expected = 2 if urgent_threads else 1
            wait_until(lambda: len(_named_workers(actors.app)) == expected, 60, "the worker processes")
            names = _named_workers(actors.app)
            assert [n.endswith("(urgent)") for n in names].count(True) == expected - 1, names
            assert len({n.split()[0] for n in names}) == expected, "processes of their own"
            pids = {int(n.split(":")[1].split()[0]): n.endswith("(urgent)") for n in names}
            assert set(pids) <= workers.children(), names
            # Beside an urgent lane the bulk process yields the CPU to it (MDMQ_WORKER_BULK_NICE).
            ours = os.getpriority(os.PRIO_PROCESS, 0)
            bulk_nice = settings.worker_bulk_nice if urgent_threads else 0
            for pid, urgent in pids.items():
                assert os.getpriority(os.PRIO_PROCESS, pid) == ours + (0 if urgent else bulk_nice)
            # Two deployments of one device, on the bulk lane: the thread's chunk, then one more behind it.
            rollout = actors.create(
                ROLLOUT_ORG, [NewDeployment(world.rollout_device, k) for k in (Kind.profile, Kind.app)]
            ).ids
            taken = "the bulk thread to take a chunk"
            wait_until(lambda: any(_claimed(engine, i) for i in rollout), 60, taken)
            [lock] = actors.create(
                LOST_PHONE_ORG, [NewDeployment(world.lost_phone, Kind.security_action, {"action": "lock"})]
            ).ids
            wait_until(lambda: _pushed(engine, lock), 60, "the lock to be pushed")
            chunk_answered = any(_pushed(engine, i) for i in rollout)
            if urgent_threads:
                assert not chunk_answered, "the lock was pushed only once the chunk's thread was free"
            else:
                assert chunk_answered, "with no urgent threads the lock waits for the bulk thread"
    finally:
        actors.app.close()


def test_a_stopping_command_still_pushes_locks_until_its_bulk_process_has_finished(
    world: World, tmp_path: Path
) -> None:
    """SIGTERM to the command while its only bulk thread waits for a slow APNs answer: Dramatiq asks every
    process to stop at once, the bulk process finishes its chunk first, and the urgent lane goes on taking
    locks until it has; then the whole command exits."""
    actors = declare_actors(App(world.settings))
    engine = actors.app.engine
    log = tmp_path / "workers.log"
    try:
        processes = WorkerProcesses(world.settings, processes=1, threads=1, log=log, restart_after_s=3_600)
        with processes as workers:
            wait_until(lambda: len(_named_workers(actors.app)) == 2, 60, "the bulk and urgent processes")
            [chunk] = actors.create(ROLLOUT_ORG, [NewDeployment(world.rollout_device, Kind.profile)]).ids
            wait_until(lambda: _claimed(engine, chunk), 60, "the bulk thread to take its chunk")
            os.kill(workers.pid, signal.SIGTERM)
            draining = "stops once the 1 bulk processes have exited"
            wait_until(lambda: draining in log.read_text(), 60, "the lane to be asked to stop")

            [lock] = actors.create(
                LOST_PHONE_ORG, [NewDeployment(world.lost_phone, Kind.security_action, {"action": "lock"})]
            ).ids
            wait_until(lambda: _pushed(engine, lock), 60, "the lock to be pushed")
            assert not _pushed(engine, chunk), "the bulk process was still finishing its chunk"
            assert workers.children(), "the command is still running"

            wait_until(lambda: not workers.children(), 120, "the command to exit")
            assert _pushed(engine, chunk), "the bulk process finished its chunk before it exited"
    finally:
        actors.app.close()


@pytest.mark.parametrize("paced_lane_max_rate", [200.0, 0.0])
def test_a_paced_organizations_chunk_is_pushed_while_the_only_bulk_thread_pushes_one(
    world: World, paced_lane_max_rate: float
) -> None:
    """A paced organization's chunks are served by the urgent lane's process (`MDMQ_PACED_LANE_MAX_RATE`),
    so that none waits behind a rollout's chunk to go out on its slot; above that rate, on the bulk lane,
    the same chunk waits for the bulk thread."""
    settings = world.settings.model_copy(update={"paced_lane_max_rate": paced_lane_max_rate})
    actors = declare_actors(App(settings))
    engine = actors.app.engine
    try:
        with actors.app.session() as s:
            set_fair_share(s, organization_id=LOST_PHONE_ORG, wake_rate_per_s=10)
        with WorkerProcesses(settings, processes=1, threads=1, restart_after_s=3_600):
            wait_until(lambda: len(_named_workers(actors.app)) == 2, 60, "the worker processes")
            rollout = actors.create(
                ROLLOUT_ORG, [NewDeployment(world.rollout_device, k) for k in (Kind.profile, Kind.app)]
            ).ids
            wait_until(
                lambda: any(_claimed(engine, i) for i in rollout), 60, "the bulk thread to take a chunk"
            )
            # Two, or it would go on the urgent lane as a single deployment does.
            paced = actors.create(
                LOST_PHONE_ORG, [NewDeployment(world.lost_phone, k) for k in (Kind.profile, Kind.app)]
            ).ids
            wait_until(lambda: all(_pushed(engine, i) for i in paced), 60, "the paced chunks to be pushed")
            chunk_answered = any(_pushed(engine, i) for i in rollout)
            if paced_lane_max_rate:
                assert not chunk_answered, "the paced chunk was pushed only once the bulk thread was free"
            else:
                assert chunk_answered, "on the bulk lane the paced chunk waits for the bulk thread"
    finally:
        actors.app.close()
