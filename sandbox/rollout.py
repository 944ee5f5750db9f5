"""A rollout to the simulated fleet through mdmq's whole pipeline: the demo's, the fault suite's and the
acceptance tests'.

On the embedded default everything runs in this process: SQLite, Dramatiq's in-process broker with worker
threads, the emulators over TLS and the fleet, and the sweeps every 0.2 s. On other stores the workers are
real `dramatiq` processes (`sandbox.processes`). APNs wake-ups go as real MDM pushes do: over TLS with the
organization's push certificate, whose subject UID is the topic [A-MDMPUSH]. The retry policy is the
rollout's own: seconds where production waits hours, so that postponements and silent devices play out.
"""

from __future__ import annotations

import json
import logging
import secrets
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import dramatiq

from config.settings import Settings
from models.database import DATABASE_ERRORS, is_connection_error
from models.enums import Platform, Provider
from models.migrations.runner import upgrade
from models.reports import parse_report
from models.statuses import TERMINAL, Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.deployments import error_examples, pending_commands, rollout_state
from models.store.devices import NewDevice, add_devices
from models.store.rollouts import create_rollout
from models.types import utcnow
from sandbox.credentials import (
    EMULATED_APNS_ENVIRONMENT,
    DemoCredential,
    new_credential,
    register_credentials,
    store_credentials,
)
from sandbox.fleet import Answer, Behaviour, Fleet, PendingCommand
from sandbox.processes import WorkerProcesses, settings_environment
from sandbox.registry import DeviceRegistry
from sandbox.server import SandboxThread
from sandbox.tls import ServerTls, make_ca
from workers.actors import Actors, declare_actors
from workers.app import App
from workers.services.reports import CheckInReport, DeviceReport, record_check_in
from workers.services.sweeps import relay_unenqueued, repush_unanswered, requeue_postponed

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.2
# The rollout enqueues right after each commit; what is still not enqueued after this was lost on the way.
RELAY_GRACE_S = 5.0

State = list[tuple[str, str, Kind, Status]]  # deployment, device, kind, status


def _check_in_threads(settings: Settings) -> int:
    """SQLite has one writer: more threads would only queue for it. PostgreSQL takes them in parallel."""
    return 4 if settings.database_url.startswith("sqlite") else 16


def demo_limits(devices: int) -> dict[str, dict[str, float]]:
    """The rollout organization's retry policy: four postponements and four wake-up pushes, seconds apart,
    so that a device that never checks in fails after about 11 times the first wait. The fleet checks in
    some 60 devices a second on PostgreSQL, so a larger fleet waits longer before a re-push (devices/200 s,
    at least 2 s), or a device still waiting its turn would look silent. The deadline, 15 minutes or 20
    first waits, lies past the 11 first waits in which a silent device has had its four pushes.
    Stored on the organization, so that worker processes of their own apply it too."""
    push_first_s = max(2.0, devices / 200)
    limits = {
        "max_postpones": 4,
        "deadline_s": max(900.0, 20 * push_first_s),
        "postpone_first_s": 0.3,
        "postpone_max_s": 2,
        "max_pushes": 4,
        "push_first_s": push_first_s,
        "push_max_s": 4 * push_first_s,
    }
    return {kind.value: limits for kind in Kind}


def demo_redeliver_after_s(devices: int) -> float:
    """20 s, or longer for a fleet whose first wave of messages waits longer in the queue (the workers take
    some 1,000 deployments a second, and a device has about 2.6)."""
    return max(20.0, devices / 100)


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
    """The MDM check-in server as the fleet sees it: pending commands from the store, and each check-in's
    reports bound to the device that sends them and recorded at once and in order, in one transaction, as
    the API records them."""

    def __init__(self, app: App, organization_id: str) -> None:
        self.app = app
        self.organization_id = organization_id

    def pending(self, device_id: str) -> Sequence[PendingCommand]:
        with self.app.session() as session:
            return [
                PendingCommand(i, kind.value) for i, kind in pending_commands(session, device_id=device_id)
            ]

    def report(self, device_id: str, answers: Sequence[Answer]) -> None:
        now = utcnow()
        reports = [
            CheckInReport(
                device_id,
                DeviceReport(
                    a.deployment_id, parse_report(a.report), a.reason, a.error_chain, reported_at=now
                ),
            )
            for a in answers
        ]
        with self.app.session() as session:
            record_check_in(
                session,
                organization_id=self.organization_id,
                reports=reports,
                policy=self.app.policy,
                max_lead_s=self.app.settings.report_max_lead_s,
                now=now,
            )


def run_rollout(
    settings: Settings, *, devices: int, seed: int, timeout_s: float, progress: Callable[[int, int], None]
) -> DemoResult:
    """A rollout from start to its settled state, or to `timeout_s`: `mdmq demo`."""
    with Rollout(settings, devices=devices, seed=seed) as rollout:
        started = time.monotonic()
        rollout.start()
        state = rollout.wait(timeout_s, progress)
        return rollout.result(state, time.monotonic() - started)


class Rollout:
    """A rollout's parts, running: the emulators and the fleet, the app, the workers and the sweeps.

    `mdmq demo` starts one and waits; the acceptance tests and the fault suite also reach into its parts
    while it runs (the emulators' faults, the registry's keys, the worker processes) and renew its
    credentials.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        devices: int,
        seed: int,
        mix: Mapping[Behaviour, float] | None = None,
        worker_processes: int = 2,
        tls: ServerTls | None = None,
        worker_log: Path | None = None,
    ) -> None:
        """`tls`: the emulators' server certificate (a throw-away one without); mdmq trusts its CA through
        the settings' `push_ca_file`, or a file the rollout writes when that is unset.
        `worker_log`: where the worker processes' log lines go (the terminal's stderr without)."""
        self.registry = DeviceRegistry()
        # Apple's side of the push certificates: renewals are issued by the same authority.
        self.push_ca = make_ca("mdmq demo push CA")
        self.registry.add_apns_client_ca(self.push_ca.certificate)
        self.keys = register_credentials(self.registry, push_ca=self.push_ca)
        run = secrets.token_hex(4)
        # Same seed, same mix and outcomes; ids of this run's own, so that runs can share a database.
        self.fleet = Fleet(
            self.registry,
            seed=seed,
            size=devices,
            mix=mix,
            namespace=run,
            apns_environment=EMULATED_APNS_ENVIRONMENT,
        )
        self.organization_id = f"demo-{seed}-{run}"
        self._settings = settings
        self._worker_processes = worker_processes
        self._tls = tls or ServerTls.generate()
        self._worker_log = worker_log
        self._stack = ExitStack()

    def __enter__(self) -> Self:
        try:
            self.sandbox = self._stack.enter_context(SandboxThread(self.registry, tls=self._tls))
            self.app = App(self._app_settings())
            self._stack.callback(self.app.close)
            upgrade(self._settings.database_url)
            self.actors, self.workers = self._stack.enter_context(
                _worker(self.app, self._worker_processes, self._worker_log)
            )
            self._stack.enter_context(_sweeping(self.app, self.actors))
            self._stack.callback(self.fleet.close)
            threads = _check_in_threads(self._settings)
            self.fleet.attach(
                StoreCheckIn(self.app, self.organization_id), delay_s=(0.001, 0.01), threads=threads
            )
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def _app_settings(self) -> Settings:
        """The settings with the emulators' addresses, and the rollout's redelivery and pool sizes."""
        return self._settings.model_copy(
            update={
                "push_ca_file": self._settings.push_ca_file or self._trust_file(),
                **self.sandbox.settings(),
                # A message lost with the broker's data, or with a worker killed mid-push, is sent again
                # after this; it must outlast the queue's wait at the rollout's busiest.
                "redeliver_after_s": demo_redeliver_after_s(len(self.fleet.devices)),
                # Every check-in thread, the sweeps and the progress poll hold a connection at once.
                "database_pool_size": _check_in_threads(self._settings) + 4,
            }
        )

    def _trust_file(self) -> str:
        """The emulators' CA in a file of the rollout's own, for mdmq's processes to trust."""
        directory = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="mdmq-demo-")))
        path = directory / "emulators-ca.pem"
        path.write_bytes(self._tls.ca_pem)
        return str(path)

    def start(self, *, enqueue: bool = True) -> list[str]:
        """Create the rollout and enqueue it; `enqueue=False` commits it and stops there, as a process that
        crashed between commit and enqueue would (the re-push sweep must find it). Returns the deployment
        ids."""
        return _roll_out(
            self.app,
            self.actors if enqueue else None,
            self.fleet,
            self.organization_id,
            self.keys,
            limits=demo_limits(len(self.fleet.devices)),
        )

    def environment(self) -> dict[str, str]:
        """The environment another mdmq process needs to join this rollout (the scheduler, the API): this
        process's, with the rollout's settings as `MDMQ_*` variables, the emulators' addresses included."""
        return settings_environment(self.app.settings)

    def renew(self, provider: Provider) -> list[str]:
        """A new credential for `provider`, known to the emulator and stored as an operator's upload is (for
        APNs a renewed push certificate: new key and certificate, the same topic); what was held for the
        old one is released and enqueued. Returns the released ids."""
        self.keys[provider] = new_credential(self.registry, provider, self.push_ca)
        with self.app.session() as s:
            released = store_credentials(s, self.organization_id, {provider: self.keys[provider]})
        self.actors.enqueue_ids(released)
        return released

    def wait(
        self, timeout_s: float, progress: Callable[[int, int], None] = lambda done, total: None
    ) -> State:
        return _wait(self.app, self.fleet, self.organization_id, timeout_s, progress)

    def result(self, state: State, seconds: float) -> DemoResult:
        return _result(self.app, self.fleet, self.organization_id, state, seconds)


@contextmanager
def _worker(
    app: App, processes: int, log: Path | None = None
) -> Iterator[tuple[Actors, WorkerProcesses | None]]:
    """Worker threads in this process on the in-process broker; real `dramatiq` processes on any other.
    Yields the actors, and the `dramatiq` command when there is one."""
    actors = declare_actors(app)
    if app.settings.is_embedded:
        worker = dramatiq.Worker(app.broker, worker_threads=8, worker_timeout=100)
        worker.start()
        try:
            yield actors, None
        finally:
            worker.stop()
        return
    with WorkerProcesses(app.settings, processes, log=log) as workers:
        yield actors, workers


@contextmanager
def _sweeping(app: App, actors: Actors) -> Iterator[None]:
    stop = threading.Event()

    def sweep() -> None:
        while not stop.wait(SWEEP_INTERVAL_S):
            now = utcnow()
            try:
                # A transaction each, as the scheduler runs them: one writer's row locks never span two.
                with app.session() as s:
                    due = requeue_postponed(s, now=now)
                redeliver = app.settings.redeliver_after_s
                with app.session() as s:
                    due += repush_unanswered(s, policy=app.policy, now=now, redeliver_after_s=redeliver)
                with app.session() as s:
                    due += relay_unenqueued(s, now=now, grace_s=RELAY_GRACE_S)
                actors.enqueue(due)
            except Exception:
                # The database or the broker away for a moment: the next pass picks up where this one failed,
                # as the scheduler's next run of a job does.
                log.exception("rollout: a sweep failed; trying again in %.1f s", SWEEP_INTERVAL_S)

    thread = threading.Thread(target=sweep, name="mdmq-demo-sweeps", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _roll_out(
    app: App,
    actors: Actors | None,
    fleet: Fleet,
    organization_id: str,
    keys: Mapping[Provider, DemoCredential],
    *,
    limits: dict[str, dict[str, float]],
) -> list[str]:
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
        store_credentials(s, organization_id, keys)
        add_devices(
            s,
            organization_id=organization_id,
            devices=[NewDevice(d.platform, d.token, push_magic=d.push_magic, id=d.id) for d in fleet.devices],
        )
        # Written as enqueued, as `Actors.create` writes them: one session with the set-up above.
        redeliver = app.settings.redeliver_after_s
        rollout_id = create_rollout(s, organization_id=organization_id, deployments=wanted, created_by="demo")
        ids = create_deployments(
            s,
            organization_id=organization_id,
            deployments=wanted,
            redeliver_after_s=redeliver,
            rollout_id=rollout_id,
        )
    if actors is not None:
        actors.enqueue_created(organization_id, ids, wanted)
    return ids


def _wait(
    app: App, fleet: Fleet, organization_id: str, timeout_s: float, progress: Callable[[int, int], None]
) -> State:
    deadline = time.monotonic() + timeout_s
    state: State | None = None
    while True:
        try:
            with app.session() as s:
                state = rollout_state(s, organization_id=organization_id)
        except DATABASE_ERRORS as e:
            if not is_connection_error(e):
                raise
            # The database away for a moment (the fault suite restarts it): poll again, unless time is up.
            log.warning("rollout: the progress poll could not reach the database", exc_info=True)
            if time.monotonic() > deadline:
                if state is None:
                    raise
                return state
            time.sleep(0.25)
            continue
        settled = sum(
            status is fleet.expected_status(device, kind) or status in TERMINAL[kind]
            for _, device, kind, status in state
        )
        progress(settled, len(state))
        if settled == len(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.25)  # a progress poll of the rollout's own loop, not an actor


def _result(app: App, fleet: Fleet, organization_id: str, state: State, seconds: float) -> DemoResult:
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
