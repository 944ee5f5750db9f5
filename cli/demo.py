"""`mdmq demo`: a mixed rollout to simulated devices through the whole pipeline, on the configured stores.

On the embedded default everything runs in this process: SQLite, Dramatiq's in-process broker with worker
threads, the sandbox's push emulators and a simulated fleet, and the sweeps every 0.2 s. The retry policy is
the demo's own: seconds where production waits hours, so that postponements and silent devices play out.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dramatiq
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from config.app import App
from config.settings import Settings
from models.enums import CredentialKind, Platform, Provider, PushEnvironment
from models.migrations.runner import upgrade
from models.reports import parse_report
from models.statuses import TERMINAL, Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.deployments import error_examples, pending_commands, rollout_state
from models.store.devices import NewDevice, add_devices
from models.types import utcnow
from sandbox import DeviceRegistry, SandboxThread
from sandbox.fleet import APNS_TOPIC, FCM_PROJECT_ID, Fleet, PendingCommand
from workers.actors import Actors, declare_actors
from workers.enqueue import as_due
from workers.services.credentials import store_credential
from workers.services.reports import DeviceReport, record_device_report
from workers.services.sweeps import relay_unenqueued, repush_unanswered, requeue_postponed

SWEEP_INTERVAL_S = 0.2
TEAM_ID, KEY_ID = "DEMOTEAM01", "DEMOKEY001"
FCM_EMAIL = f"mdmq-demo@{FCM_PROJECT_ID}.iam.gserviceaccount.com"


def _check_in_threads(settings: Settings) -> int:
    """SQLite has one writer: more threads would only queue for it. PostgreSQL takes them in parallel."""
    return 4 if settings.database_url.startswith("sqlite") else 16


def demo_limits(devices: int) -> dict[str, dict[str, float]]:
    """The demo organization's retry policy: four postponements and four wake-up pushes, seconds apart, so a
    device that never checks in fails in about 15 s. The simulated fleet checks in one device at a time, so a
    larger fleet gets longer waits before a re-push, or a device still waiting its turn would look silent.
    Stored on the organization, so that worker processes of their own apply it too."""
    push_first_s = max(2.0, devices / 100)
    limits = {
        "max_postpones": 4,
        "deadline_s": 900,
        "postpone_first_s": 0.3,
        "postpone_max_s": 2,
        "max_pushes": 4,
        "push_first_s": push_first_s,
        "push_max_s": 4 * push_first_s,
    }
    return {kind.value: limits for kind in Kind}


@dataclass
class DemoResult:
    devices: int
    deployments: dict[str, dict[str, int]]
    matched: int
    total: int
    seconds: float
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.matched == self.total

    def as_json(self) -> str:
        return json.dumps(
            {
                "devices": self.devices,
                "deployments": self.deployments,
                "matched": self.matched,
                "total": self.total,
                "seconds": round(self.seconds, 2),
                "examples": self.examples,
                "ok": self.ok,
            }
        )


class StoreCheckIn:
    """The MDM check-in server as the fleet sees it: pending commands from the store, reports recorded at once
    and in order, as a check-in server answering one device request at a time does."""

    def __init__(self, app: App) -> None:
        self.app = app

    def pending(self, device_id: str) -> Sequence[PendingCommand]:
        with self.app.session() as session:
            return [
                PendingCommand(i, kind.value) for i, kind in pending_commands(session, device_id=device_id)
            ]

    def report(
        self,
        device_id: str,
        deployment_id: str,
        report: str,
        *,
        reason: str | None = None,
        error_chain: list[dict[str, Any]] | None = None,
    ) -> None:
        with self.app.session() as session:
            device_report = DeviceReport(deployment_id, parse_report(report), reason, error_chain)
            record_device_report(session, device_report, policy=self.app.policy)


def run_demo(
    settings: Settings, *, devices: int, seed: int, timeout_s: float, progress: Callable[[int, int], None]
) -> DemoResult:
    registry = DeviceRegistry()
    keys = _register_credentials(registry)
    fleet = Fleet(registry, seed=seed, size=devices)
    with SandboxThread(registry) as sandbox:
        app = App(
            settings.model_copy(
                update={
                    "apns_url": sandbox.apns_url,
                    "apns_sandbox_url": sandbox.apns_url,
                    "fcm_url": sandbox.fcm_url,
                    "fcm_token_url": f"{sandbox.fcm_url}/token",
                    "aosp_url": sandbox.aosp_url,
                    # Every check-in thread, the sweeps and the progress poll hold a connection at once.
                    "database_pool_size": _check_in_threads(settings) + 4,
                }
            ),
        )
        upgrade(settings.database_url)
        organization_id = f"demo-{seed}-{int(time.time())}"
        try:
            with _worker(app) as actors, _sweeping(app, actors):
                fleet.attach(StoreCheckIn(app), delay_s=(0.001, 0.01), threads=_check_in_threads(settings))
                started = time.monotonic()
                _roll_out(app, actors, fleet, organization_id, keys, limits=demo_limits(devices))
                state = _wait(app, fleet, organization_id, timeout_s, progress)
                seconds = time.monotonic() - started
        finally:
            fleet.close()
            app.close()
        return _result(app, fleet, organization_id, state, seconds)


def _register_credentials(registry: DeviceRegistry) -> dict[Provider, tuple[CredentialKind, str]]:
    apns = ec.generate_private_key(ec.SECP256R1())
    fcm = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    aosp = secrets.token_hex(16)
    registry.add_apns_key(team_id=TEAM_ID, key_id=KEY_ID, public_key=apns.public_key())
    registry.add_fcm_service_account(FCM_EMAIL, fcm.public_key(), project_id=FCM_PROJECT_ID)
    registry.add_aosp_api_key(aosp)
    account = {
        "type": "service_account",
        "client_email": FCM_EMAIL,
        "private_key": _pem(fcm),
        "project_id": FCM_PROJECT_ID,
        "private_key_id": "demo",
    }
    return {
        Provider.apns: (CredentialKind.apns_token, _pem(apns)),
        Provider.fcm: (CredentialKind.fcm_service_account, json.dumps(account)),
        Provider.aosp: (CredentialKind.aosp_api_key, aosp),
    }


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    encoding, private = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, private, serialization.NoEncryption()).decode()


@contextmanager
def _worker(app: App) -> Iterator[Actors]:
    """Worker threads in this process on the in-process broker; real `dramatiq` processes on any other."""
    actors = declare_actors(app)
    if app.settings.is_embedded:
        worker = dramatiq.Worker(app.broker, worker_threads=8, worker_timeout=100)
        worker.start()
        try:
            yield actors
        finally:
            worker.stop()
        return
    with _worker_processes(app.settings):
        yield actors


@contextmanager
def _worker_processes(settings: Settings, processes: int = 2, threads: int = 8) -> Iterator[None]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")}
    environment |= {
        f"MDMQ_{name.upper()}": str(value)
        for name, value in settings.model_dump().items()
        if value is not None
    }
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        "workers.main:broker",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]
    with subprocess.Popen(  # noqa: S603  (our own interpreter and module, no outside input)
        command, env=environment, stdout=subprocess.DEVNULL
    ) as workers:
        try:
            yield
        finally:
            workers.send_signal(signal.SIGTERM)
            workers.communicate(timeout=60)


@contextmanager
def _sweeping(app: App, actors: Actors) -> Iterator[None]:
    stop = threading.Event()

    def sweep() -> None:
        while not stop.wait(SWEEP_INTERVAL_S):
            now = utcnow()
            with app.session() as s:
                due = requeue_postponed(s, now=now) + repush_unanswered(s, policy=app.policy, now=now)
                due += relay_unenqueued(s, now=now)
            actors.enqueue(due)

    thread = threading.Thread(target=sweep, name="mdmq-demo-sweeps", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _roll_out(
    app: App,
    actors: Actors,
    fleet: Fleet,
    organization_id: str,
    keys: dict[Provider, tuple[CredentialKind, str]],
    *,
    limits: dict[str, dict[str, float]],
) -> None:
    """Every device gets a profile and an app; every fifth a lock; Android and AOSP devices a message."""
    wanted: list[NewDeployment] = []
    for i, device in enumerate(fleet.devices):
        wanted += [
            NewDeployment(device.id, Kind.profile, {"profile": "com.example.wifi"}),
            NewDeployment(device.id, Kind.app, {"app": "com.example.notes"}),
        ]
        if i % 5 == 0:
            wanted.append(NewDeployment(device.id, Kind.security_action, {"action": "lock"}))
        if device.platform in (Platform.android, Platform.aosp):
            wanted.append(NewDeployment(device.id, Kind.message, {"text": "Please update today"}))
    with app.session() as s:
        ensure_organization(s, organization_id=organization_id, name="mdmq demo").retry_policy = limits
        for provider, (kind, secret) in keys.items():
            store_credential(
                s,
                organization_id=organization_id,
                provider=provider,
                kind=kind,
                secret=secret,
                key_id=KEY_ID,
                team_id=TEAM_ID,
                topic=APNS_TOPIC,
                project_id=FCM_PROJECT_ID,
                environment=PushEnvironment.sandbox,
            )
        add_devices(
            s,
            organization_id=organization_id,
            devices=[NewDevice(d.platform, d.token, push_magic=d.push_magic, id=d.id) for d in fleet.devices],
        )
        ids = create_deployments(s, organization_id=organization_id, deployments=wanted)
    actors.enqueue(as_due([(i, organization_id, d.kind) for i, d in zip(ids, wanted, strict=True)]))


def _wait(
    app: App, fleet: Fleet, organization_id: str, timeout_s: float, progress: Callable[[int, int], None]
) -> list[tuple[str, str, Kind, Status]]:
    deadline = time.monotonic() + timeout_s
    while True:
        with app.session() as s:
            state = rollout_state(s, organization_id=organization_id)
        settled = sum(
            status is fleet.expected_status(device, kind) or status in TERMINAL[kind]
            for _, device, kind, status in state
        )
        progress(settled, len(state))
        if settled == len(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.25)  # a progress poll of the demo's own loop, not an actor


def _result(
    app: App, fleet: Fleet, organization_id: str, state: list[tuple[str, str, Kind, Status]], seconds: float
) -> DemoResult:
    counts: Counter[tuple[str, str]] = Counter((kind.value, status.value) for _, _, kind, status in state)
    table: dict[str, dict[str, int]] = {}
    for (kind, status), n in sorted(counts.items()):
        table.setdefault(kind, {})[status] = n
    matched = sum(status is fleet.expected_status(device, kind) for _, device, kind, status in state)
    with app.session() as s:
        examples = [
            {"status": st, "error": msg, "count": n}
            for st, msg, n in error_examples(s, organization_id=organization_id)
        ]
    return DemoResult(len(fleet.devices), table, matched, len(state), seconds, examples)
