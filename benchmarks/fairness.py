"""Fairness between organizations: what one organization's rollout does to another's, measured where a
device sees it, at the emulators.

Each run is a PostgreSQL database and emulators of its own, and `mdmq worker` processes on Redis. The
organizations create their deployments through `Actors.create`, as the API does (at most 10,000 a
request), and the emulators (APNs, FCM and AOSP over TLS, with injected latency, in a process of their
own) note when each device's push was accepted. The devices stay silent, so that what is timed is the push
path: from an organization's create to its devices' pushes accepted.

    python -m benchmarks.fairness [--two-orgs] [--urgent] [--paced] [--ten-orgs]   # all without a flag
                                  [--devices-a 100000] [--runs 3] [--out PATH]

- two-orgs: A's rollout, then (once A's creates returned: all its messages enqueued) B's 500 profiles.
  B's latency from its create (p50/p99/max), A's total time, and A's total in a run of its own.
- urgent: during A's rollout, single locks, `urgent: true` profiles and (for contrast) plain profiles of
  another organization, spread over A's progress; the same kinds first with the workers idle. Latency to
  accepted per kind, and its part before the push was sent (the receipt's `sent_at`).
- paced: C with `Organization.wake_rate_per_s` set and its rollout beside an unpaced organization's: the
  time to every C push accepted, the most C pushes in a 1-second window (as claimed, sent and accepted),
  C's rate while the unpaced rollout lasted, the fair queue's takes (beyond the chunks: tokens sent
  again), and the unpaced rollout's time beside its time in a run of its own.
- ten-orgs: ten organizations' rollouts created at once: each one's completion time, the mean and the
  largest deviation from it.

Every run reports the worker processes' CPU seconds (user and system) and its database's PostgreSQL
backends' per 1,000 pushes. Figures compared across runs are the medians of `--runs`; the runs are kept
beside them. Writes benchmarks/results/fairness-<time>.json, or `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.deployments import MAX_PER_REQUEST
from benchmarks._postgres import scratch_database
from benchmarks.fanout import (
    children,
    cpu_by_pid,
    cpu_s,
    cpu_since,
    own_backends,
    wait_for_metrics,
    wait_for_workers,
    workers,
)
from benchmarks.faults import OwnRedis, free_port
from config.settings import Settings
from models.enums import Platform
from models.statuses import Kind
from models.store import NewDeployment, ensure_organization
from models.store.devices import NewDevice, add_devices
from sandbox import Delivery
from sandbox.credentials import (
    EMULATED_APNS_ENVIRONMENT,
    DemoCredential,
    register_credentials,
    store_credentials,
)
from workers.actors import Actors, declare_actors
from workers.app import App

RESULTS = Path(__file__).resolve().parent / "results"
Device = tuple[str, str, str, str | None]  # id, platform, token, push magic
Times = dict[str, list[float]]  # a device's token (lower case): the wall-clock times its pushes were accepted
DEVICES_PER_TRANSACTION = 50_000  # the set-up's inserts of a 1,000,000-device organization, in pieces


@dataclass(frozen=True)
class Options:
    latency_ms: float = 40.0
    processes: int = 2
    threads: int = 8
    timeout_s: float = 900.0
    chunk_size: int = 250
    broker_url: str = ""  # set by `main` (a Redis of the invocation's own) or the caller
    database_url: str | None = None  # None: a scratch database for each run
    paced_lane_max_rate: float | None = None  # None: the setting's default; 0: paced on the bulk lane
    # The emulators' niceness beside the benchmark's (negative, as root: served first): a provider does not
    # share the workers' cores, and an emulator that waits for them notes pushes late.
    emulator_nice: int = 0


# --- the outside world: the emulators, in a process of their own -----------------------------------------


class Accepted:
    """Every push the emulators accepted for a device of the run's organizations, with its time."""

    def __init__(self, organization_of: Mapping[str, str]) -> None:
        self._organization_of = organization_of
        self._lock = threading.Lock()
        self.times: Times = {}
        self._reached: dict[str, int] = dict.fromkeys(set(organization_of.values()), 0)

    def __call__(self, delivery: Delivery) -> None:
        token = delivery.token.lower()
        organization = self._organization_of.get(token)
        if organization is None:
            return  # the certificate watch's probe
        with self._lock:
            times = self.times.setdefault(token, [])
            if not times:
                self._reached[organization] += 1
            times.append(delivery.delivered_at)

    def reached(self) -> dict[str, int]:
        """Devices that have had a push accepted, by organization."""
        with self._lock:
            return dict(self._reached)


def outside_world(pipe: Connection, sizes: Mapping[str, int], *, latency_ms: float) -> None:
    """The emulators and a fleet of silent devices for each organization (its own seed and ids); sends the
    emulators' addresses, their CA, the credentials and the devices, then answers "reached" until "stop",
    which it answers with every accepted push's time."""
    from sandbox import DeviceRegistry, FaultConfig, Latency, SandboxThread
    from sandbox.fleet import Behaviour, Fleet

    registry = DeviceRegistry()
    keys = register_credentials(registry)  # before the emulators start: they read the push CA then
    fleets = {
        organization: Fleet(
            registry,
            seed=seed,
            size=size,
            mix={Behaviour.success: 1.0},
            namespace=organization,
            apns_environment=EMULATED_APNS_ENVIRONMENT,
        )
        for seed, (organization, size) in enumerate(sizes.items(), start=1)
    }
    accepted = Accepted({d.token.lower(): o for o, fleet in fleets.items() for d in fleet.devices})
    registry.subscribe(accepted)
    faults = FaultConfig(latency=Latency.fixed(latency_ms))
    options = {"apns_faults": faults, "fcm_faults": faults, "aosp_faults": faults}
    with SandboxThread(registry, tls=True, **options) as sandbox:
        assert sandbox.tls is not None
        listed = {
            organization: [(d.id, d.platform.value, d.token, d.push_magic) for d in fleet.devices]
            for organization, fleet in fleets.items()
        }
        pipe.send((sandbox.settings(), sandbox.tls.ca_pem, keys, listed))
        while pipe.recv() == "reached":
            pipe.send(accepted.reached())
        pipe.send(accepted.times)


class World:
    """The emulators' process, from the benchmark's side."""

    def __init__(self, sizes: Mapping[str, int], latency_ms: float, nice: int = 0) -> None:
        self._pipe, child = multiprocessing.Pipe()
        self._lock = threading.Lock()
        self._process = multiprocessing.get_context("spawn").Process(
            target=outside_world, args=(child, dict(sizes)), kwargs={"latency_ms": latency_ms}, daemon=True
        )
        self._process.start()
        if nice and self._process.pid is not None:
            own = os.getpriority(os.PRIO_PROCESS, 0)
            os.setpriority(os.PRIO_PROCESS, self._process.pid, own + nice)  # below 0: as root only
        self.endpoints, self.ca_pem, self.keys, self.devices = self._pipe.recv()
        self.times: Times | None = None

    def reached(self) -> dict[str, int]:
        with self._lock:
            self._pipe.send("reached")
            answer: dict[str, int] = self._pipe.recv()
            return answer

    def wait(self, expected: Mapping[str, int], deadline: float, poll_s: float = 0.05) -> bool:
        """Until every organization of `expected` has had that many devices reached; False at `deadline`."""
        while time.monotonic() < deadline:
            reached = self.reached()
            if all(reached.get(o, 0) >= n for o, n in expected.items()):
                return True
            time.sleep(poll_s)  # the benchmark's own poll of the emulators' count
        return False

    def close(self) -> Times:
        """Stop the emulators (once); every accepted push's time."""
        with self._lock:
            if self.times is None:
                self._pipe.send("stop")
                self.times = self._pipe.recv()
                self._process.join(timeout=60)
            return self.times


# --- a run: a database, the emulators, the organizations, the workers --------------------------------------


@dataclass
class Run:
    app: App
    actors: Actors
    world: World
    devices: dict[str, list[Device]]
    worker_pids: list[int]
    timeout_s: float
    # When each organization's create returned (`creating`), and when the workers were started, wall clock.
    created: dict[str, float] = field(default_factory=dict)
    workers_started: float = math.nan
    # The run's PostgreSQL backends' CPU seconds before `before_workers` (`CpuMeter(from_start=True)`).
    backends_at_start: dict[int, float] = field(default_factory=dict)

    @property
    def engine(self) -> sa.Engine:
        return self.app.engine

    def token(self, organization: str, index: int) -> str:
        return self.devices[organization][index][2].lower()


@contextmanager
def running(
    sizes: Mapping[str, int],
    options: Options,
    wake_rates: Mapping[str, float] | None = None,
    *,
    before_workers: Callable[[Run], None] | None = None,
) -> Iterator[Run]:
    """A run of the organizations `sizes` names (with that many devices each); `wake_rates` set on the
    organizations' `wake_rate_per_s` before the workers start, and `before_workers` called (to create work
    that waits for them) before they start."""
    redis.Redis.from_url(options.broker_url).flushdb()  # nothing left by an earlier run
    database: AbstractContextManager[str] = (
        nullcontext(options.database_url) if options.database_url else scratch_database()
    )
    with ExitStack() as stack:
        database_url = stack.enter_context(database)
        world = World(sizes, options.latency_ms, options.emulator_nice)
        stack.callback(world.close)
        settings = _settings(
            options, database_url, world, Path(stack.enter_context(tempfile.TemporaryDirectory()))
        )
        app = App(settings)
        stack.callback(app.close)
        _set_up(app, world, wake_rates or {})
        run = Run(app, declare_actors(app), world, world.devices, [], options.timeout_s)
        run.backends_at_start = cpu_by_pid(own_backends(app.engine))
        if before_workers is not None:
            before_workers(run)
        run.workers_started = time.time()
        dramatiq = stack.enter_context(workers(settings, options.processes, options.threads))
        wait_for_metrics(settings.worker_metrics_port, 60)
        wait_for_workers(dramatiq.pid, options.processes, options.threads, 60)
        run.worker_pids = [dramatiq.pid, *children(dramatiq.pid)]
        yield run


def _settings(options: Options, database_url: str, world: World, directory: Path) -> Settings:
    ca_file = directory / "emulators-ca.pem"  # the emulators' CA, for the workers to trust
    ca_file.write_bytes(world.ca_pem)
    settings = Settings(
        database_url=database_url,
        broker_url=options.broker_url,
        **world.endpoints,
        push_ca_file=str(ca_file),
        metrics_host="127.0.0.1",
        log_level="WARNING",
        worker_metrics_port=free_port(),
        # Every organization's creating thread (ten-orgs) and the benchmark's reads hold one at once.
        database_pool_size=max(options.threads, len(world.devices)) + 4,
        dispatch_chunk_size=options.chunk_size,
    )
    if options.paced_lane_max_rate is None:
        return settings
    return settings.model_copy(update={"paced_lane_max_rate": options.paced_lane_max_rate})


def _set_up(app: App, world: World, wake_rates: Mapping[str, float]) -> None:
    """Each organization with the emulators' credentials and its devices; its wake-up rate, if any, set
    on the model's column, as the API and CLI set it."""
    keys: dict[Any, DemoCredential] = world.keys
    for organization, devices in world.devices.items():
        with app.session() as s:
            row = ensure_organization(s, organization_id=organization, name=f"fairness {organization}")
            row.wake_rate_per_s = wake_rates.get(organization)
            store_credentials(s, organization, keys)
        for start in range(0, len(devices), DEVICES_PER_TRANSACTION):
            batch = devices[start : start + DEVICES_PER_TRANSACTION]
            new = [NewDevice(Platform(p), token, push_magic=magic, id=i) for i, p, token, magic in batch]
            with app.session() as s:
                add_devices(s, organization_id=organization, devices=new)


def organization_ids(*names: str) -> list[str]:
    """Organization ids of this run's own (`a-1f2e` …), so that runs can share a database."""
    run = secrets.token_hex(2)
    return [f"{name}-{run}" for name in names]


# --- creating, as the API does ----------------------------------------------------------------------------


def create(
    run: Run, organization: str, devices: Sequence[Device], *, kind: Kind = Kind.profile, urgent: bool = False
) -> float:
    """A deployment of `kind` for each of `devices`, created through `Actors.create` at most
    MAX_PER_REQUEST at a time, as API requests are; returns the wall-clock time the first create began."""
    started = time.time()
    for start in range(0, len(devices), MAX_PER_REQUEST):
        wanted = [NewDeployment(d[0], kind, {}, urgent) for d in devices[start : start + MAX_PER_REQUEST]]
        run.actors.create(organization, wanted, created_by="fairness benchmark")
    return started


def creating(run: Run, organization: str, gate: threading.Barrier | None = None) -> threading.Thread:
    """The organization's rollout created on a thread of its own (once `gate` opens, if given)."""

    def create_all() -> None:
        if gate is not None:
            gate.wait()
        create(run, organization, run.devices[organization])
        run.created[organization] = time.time()

    thread = threading.Thread(target=create_all, name=f"create-{organization}", daemon=True)
    thread.start()
    return thread


# --- what is measured -------------------------------------------------------------------------------------


class CpuMeter:
    """The worker processes' and the run's PostgreSQL backends' CPU seconds from the moment it is made;
    `from_start`, from the run's start: the workers' from theirs, PostgreSQL's from before `before_workers`
    (creates included, as when they run with the workers)."""

    def __init__(self, run: Run, *, from_start: bool = False) -> None:
        self._run = run
        self._workers = 0.0 if from_start else cpu_s(run.worker_pids)
        self._postgres = run.backends_at_start if from_start else cpu_by_pid(own_backends(run.engine))

    def per_1000(self, pushes: int) -> dict[str, float | None]:
        workers_s = cpu_s(self._run.worker_pids) - self._workers
        postgres_s = cpu_since(self._postgres, own_backends(self._run.engine))
        scale = 1000 / pushes if pushes else math.nan
        return {
            "workers": round(workers_s * scale, 4),
            "postgresql_run_database": round(postgres_s * scale, 4),
        }


def settle(run: Run, expected: Mapping[str, int], started: float) -> dict[str, Any]:
    """Wait until every device of `expected` has had its push accepted and every deployment is recorded
    as pushed; what was reached, and whether all of it was."""
    deadline = time.monotonic() + run.timeout_s
    delivered = run.world.wait(expected, deadline)
    recorded = _wait_recorded(run, list(expected), deadline) if delivered else False
    return {"complete": delivered and recorded, "wall_s": round(time.time() - started, 2)}


def _wait_recorded(run: Run, organizations: list[str], deadline: float) -> bool:
    """Until the database has every deployment of `organizations` pushed: the workers record the answers
    just after the emulators accept the pushes."""
    while time.monotonic() < deadline:
        if all(total == pushed for total, pushed in pushed_counts(run.engine, organizations).values()):
            return True
        time.sleep(0.1)
    return False


def pushed_counts(engine: sa.Engine, organizations: list[str]) -> dict[str, tuple[int, int]]:
    """(deployments, pushed: a receipt, or moved on from Queued) by organization."""
    statement = sa.text(
        "SELECT organization_id, count(*) AS n, "
        "count(*) FILTER (WHERE receipt_id IS NOT NULL OR status <> 'Queued') AS pushed "
        "FROM deployment WHERE organization_id = ANY(:organizations) GROUP BY organization_id"
    )
    with engine.connect() as connection:
        rows = connection.execute(statement, {"organizations": organizations}).all()
    return {row.organization_id: (int(row.n), int(row.pushed)) for row in rows}


def sent_at(engine: sa.Engine, organization: str) -> dict[str, float]:
    """Each device's (id) first push as mdmq sent it: its deployment's receipt's `sent_at`, wall clock."""
    statement = sa.text(
        "SELECT d.device_id, min(r.sent_at) AS sent_at FROM deployment d "
        "JOIN push_receipt r ON r.id = d.receipt_id WHERE d.organization_id = :organization "
        "GROUP BY d.device_id"
    )
    with engine.connect() as connection:
        rows = connection.execute(statement, {"organization": organization}).all()
    return {row.device_id: _utc(row.sent_at).timestamp() for row in rows}


def claimed_at(engine: sa.Engine, organization: str) -> dict[str, float]:
    """Each device's (id) deployment's claim for its push (`pushed_at`, set as its chunk's dispatch
    begins), wall clock."""
    statement = sa.text(
        "SELECT device_id, min(pushed_at) AS pushed_at FROM deployment "
        "WHERE organization_id = :organization AND pushed_at IS NOT NULL GROUP BY device_id"
    )
    with engine.connect() as connection:
        rows = connection.execute(statement, {"organization": organization}).all()
    return {row.device_id: _utc(row.pushed_at).timestamp() for row in rows}


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def first_accepted(times: Times, run: Run, organization: str, indexes: Sequence[int]) -> list[float | None]:
    """The time each device of `indexes` first had a push accepted (None: never)."""
    return [min(times.get(run.token(organization, i), []), default=None) for i in indexes]


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """p50, p99 and max of `values` (nearest rank), with how many there are and how many are missing."""
    present = sorted(v for v in values if v is not None)
    if not present:
        return {"n": 0, "missing": len(values)}

    def rank(q: float) -> float:
        return round(present[min(len(present) - 1, math.ceil(q * len(present)) - 1)], 3)

    return {
        "n": len(present),
        "missing": len(values) - len(present),
        "p50": rank(0.5),
        "p99": rank(0.99),
        "max": round(present[-1], 3),
    }


def completion_s(times: Times, run: Run, organization: str, since: float) -> float | None:
    """From `since` to the organization's last device's first push accepted; None if one never was."""
    firsts = first_accepted(times, run, organization, range(len(run.devices[organization])))
    if not firsts or any(t is None for t in firsts):
        return None
    return round(max(t for t in firsts if t is not None) - since, 3)


def most_in_a_second(moments: Sequence[float]) -> int:
    """The most of `moments` within any 1-second window."""
    ordered = sorted(moments)
    most, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def pushes(times: Times) -> int:
    return sum(len(t) for t in times.values())


def finish(run: Run, meter: CpuMeter, outcome: dict[str, Any]) -> Times:
    """The emulators' record of the run, and its CPU per 1,000 pushes written into `outcome`."""
    times = run.world.close()
    outcome["pushes"] = pushes(times)
    outcome["cpu_s_per_1000_pushes"] = meter.per_1000(outcome["pushes"])
    return times


# --- the scenarios ---------------------------------------------------------------------------------------


def two_orgs(options: Options, devices_a: int, devices_b: int, *, with_b: bool) -> dict[str, Any]:
    """A's rollout through its creates; then, with `with_b`, B's, right after A's last create returned."""
    a, b = organization_ids("a", "b")
    sizes = {a: devices_a} | ({b: devices_b} if with_b else {})
    with running(sizes, options) as run:
        meter = CpuMeter(run)
        a_started = create(run, a, run.devices[a])
        a_enqueued = time.time()
        b_started = create(run, b, run.devices[b]) if with_b else None
        outcome = settle(run, sizes, a_started)
        outcome["a_create_and_enqueue_s"] = round(a_enqueued - a_started, 2)
        times = finish(run, meter, outcome)
    outcome["a_total_s"] = completion_s(times, run, a, a_started)
    if b_started is not None:
        outcome["b_created_after_a_s"] = round(b_started - a_started, 2)
        accepted = first_accepted(times, run, b, range(devices_b))
        outcome["b_latency_s"] = spread([t - b_started if t is not None else None for t in accepted])
        outcome["b_total_s"] = completion_s(times, run, b, b_started)
    return outcome


@dataclass
class Probe:
    """One create of another organization's: its kind, its devices (indexes) and when it began."""

    label: str
    indexes: list[int]
    started: float = 0.0
    created: float = 0.0  # when its create returned: the deployments committed and their message sent


@dataclass(frozen=True)
class UrgentPlan:
    items: int = 20  # of each kind during the rollout
    group: int = 10  # devices an urgent (and a plain) profile goes to: more than one, or it is urgent anyway
    idle_items: int = 5  # of each kind before the rollout, with the workers idle
    kinds: tuple[tuple[str, Kind, bool], ...] = field(
        default=(
            ("lock", Kind.security_action, False),
            ("urgent_profile", Kind.profile, True),
            ("plain_profile", Kind.profile, False),
        )
    )

    def size(self, label: str) -> int:
        return 1 if label == "lock" else self.group

    def probes(self, per_kind: int, first_index: int) -> list[Probe]:
        """`per_kind` probes of each kind, interleaved, on devices of their own from `first_index`."""
        probes, index = [], first_index
        for _ in range(per_kind):
            for label, _, _ in self.kinds:
                probes.append(Probe(label, list(range(index, index + self.size(label)))))
                index += self.size(label)
        return probes

    def devices(self) -> int:
        return sum(self.size(label) for label, _, _ in self.kinds) * (self.items + self.idle_items)


def urgent(
    options: Options, devices_a: int, plan: UrgentPlan, *, paced_devices: int = 0, rate_per_s: float = 50.0
) -> dict[str, Any]:
    """Probes with the workers idle, then probes spread evenly over A's progress while its rollout runs;
    with `paced_devices`, beside a paced organization C's rollout, created with A's, whose chunks the urgent
    lane's process serves too."""
    a, other, c = organization_ids("a", "u", "c")
    sizes = {a: devices_a, other: plan.devices()} | ({c: paced_devices} if paced_devices else {})
    idle = plan.probes(plan.idle_items, 0)
    busy = plan.probes(plan.items, sum(len(p.indexes) for p in idle))
    pause = random.Random(3)
    with running(sizes, options, wake_rates={c: rate_per_s}) as run:
        for probe in idle:  # one at a time, each once the last was accepted: the workers idle between
            _probe(run, other, probe, plan)
            run.world.wait({other: probe.indexes[-1] + 1}, time.monotonic() + 60)
            time.sleep(pause.uniform(0.05, 0.4))  # lands anywhere in the idle workers' poll of the queue
        meter = CpuMeter(run)
        a_started = time.time()
        rollouts = [creating(run, organization) for organization in ([c] if paced_devices else []) + [a]]
        _spread_over(run, a, devices_a, lambda probe: _probe(run, other, probe, plan), busy)
        for thread in rollouts:
            thread.join()
        outcome = settle(run, sizes, a_started)
        times = finish(run, meter, outcome)
        sent = sent_at(run.engine, other)
        c_sent = list(sent_at(run.engine, c).values()) if paced_devices else []
    outcome["a_total_s"] = completion_s(times, run, a, a_started)
    if paced_devices:
        outcome["c_every_push_accepted_s"] = completion_s(times, run, c, a_started)
        outcome["c_most_sent_in_1_s"] = most_in_a_second(c_sent)
    outcome["idle"] = _probe_figures(run, times, sent, other, idle)
    outcome["during_rollout"] = _probe_figures(run, times, sent, other, busy)
    # How long a bulk chunk holds a worker thread, on average over A's rollout: what an urgent message
    # waits for at most once it is first in a process's work queue, and about what it would wait behind
    # each bulk message prefetched ahead of it.
    chunks = math.ceil(devices_a / options.chunk_size)
    if outcome["a_total_s"]:
        thread_s = outcome["a_total_s"] * options.processes * options.threads
        outcome["bulk_chunk_thread_s"] = round(thread_s / chunks, 3)
    return outcome


def _probe(run: Run, organization: str, probe: Probe, plan: UrgentPlan) -> None:
    _, kind, is_urgent = next(k for k in plan.kinds if k[0] == probe.label)
    devices = [run.devices[organization][i] for i in probe.indexes]
    probe.started = create(run, organization, devices, kind=kind, urgent=is_urgent)
    probe.created = time.time()


def _spread_over(
    run: Run, organization: str, total: int, fire: Callable[[Probe], None], probes: Sequence[Probe]
) -> None:
    """Fire probe k once `organization` has reached k/len(probes) of its `total` devices."""
    deadline = time.monotonic() + run.timeout_s
    for k, probe in enumerate(probes):
        while run.world.reached().get(organization, 0) < k * total / len(probes):
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)  # the benchmark's own poll
        fire(probe)


def _probe_figures(
    run: Run, times: Times, sent: Mapping[str, float], organization: str, probes: Sequence[Probe]
) -> dict[str, Any]:
    """Per kind: latency from create to accepted, its part to sent (queued and taken by a worker), and the
    create's own part (committed and its message sent)."""
    figures: dict[str, Any] = {}
    for label in dict.fromkeys(p.label for p in probes):
        accepted, to_sent, created = [], [], []
        for probe in (p for p in probes if p.label == label):
            created.append(probe.created - probe.started)
            moments = first_accepted(times, run, organization, probe.indexes)
            for index, moment in zip(probe.indexes, moments, strict=True):
                accepted.append(None if moment is None else moment - probe.started)
                sent_s = sent.get(run.devices[organization][index][0])
                to_sent.append(None if sent_s is None else sent_s - probe.started)
        figures[label] = {
            "accepted_s": spread(accepted),
            "sent_s": spread(to_sent),
            "created_s": spread(created),
        }
    return figures


def paced(
    options: Options, devices_c: int, rate_per_s: float, devices_p: int, *, with_c: bool
) -> dict[str, Any]:
    """C's rollout, paced at `rate_per_s`, created at the same moment as P's unpaced one; without `with_c`,
    P's alone."""
    c, p = organization_ids("c", "p")
    sizes = ({c: devices_c} if with_c else {}) | {p: devices_p}
    with running(sizes, options, wake_rates={c: rate_per_s}) as run:
        meter = CpuMeter(run)
        takes_before = fair_takes(options.broker_url)
        started = time.time()
        for thread in [creating(run, organization) for organization in sizes]:
            thread.join()
        outcome = settle(run, sizes, started)
        outcome["fair_takes"] = fair_takes(options.broker_url) - takes_before
        times = finish(run, meter, outcome)
        sent_by_device = sent_at(run.engine, c) if with_c else {}
        sent = list(sent_by_device.values())
        claimed = list(claimed_at(run.engine, c).values()) if with_c else []
    outcome["p_total_s"] = completion_s(times, run, p, started)
    if with_c:
        firsts = first_accepted(times, run, c, range(devices_c))  # each device's, in the devices' order
        accepted = [t for t in firsts if t is not None]
        outcome["c_wake_rate_per_s"] = rate_per_s
        outcome["c_every_push_accepted_s"] = completion_s(times, run, c, started)
        outcome["c_most_pushes_in_1_s"] = most_in_a_second(accepted)
        # The same, as mdmq sent them (each chunk's claim, its receipts' `sent_at`), before the way to the
        # emulator and its answer add their own jitter.
        outcome["c_most_sent_in_1_s"] = most_in_a_second(sent)
        # And as the fair queue handed them out: each chunk's claim (`pushed_at`), a few milliseconds after
        # its take, before the worker's own reads and its push loop, busy with P's chunks, delay the sends.
        outcome["c_most_claimed_in_1_s"] = most_in_a_second(claimed)
        # From mdmq's send to the emulator's acceptance, each of C's pushes: the way and the emulator's own
        # event loop, which serves P's pushes too, so that the accepted seconds can bunch what was sent apart.
        sent_in_order = [sent_by_device.get(device[0]) for device in run.devices[c]]
        lags = [a - s for a, s in zip(firsts, sent_in_order, strict=True) if a is not None and s is not None]
        outcome["c_accepted_after_sent_s"] = spread(lags)
        if len(accepted) > 1:
            outcome["c_rate_per_s"] = round(len(accepted) / max(max(accepted) - min(accepted), 1e-3), 1)
            p_last = max(
                (t for t in first_accepted(times, run, p, range(devices_p)) if t is not None), default=0.0
            )
            beside = [t for t in accepted if t <= p_last]
            if len(beside) > 1:
                outcome["c_rate_while_p_per_s"] = round(len(beside) / max(p_last - min(accepted), 1e-3), 1)
    return outcome


def fair_takes(broker_url: str) -> int:
    """How many takes the fair queue in the broker's Redis has run: each begins with the one ZRANGEBYSCORE
    (its stale claims) that Redis counts inside scripts; Dramatiq's own runs only in rare maintenance. Takes
    beyond the chunks are tokens that found none that may go yet and were sent again."""
    stats = redis.Redis.from_url(broker_url).info("commandstats")
    return int(stats.get("cmdstat_zrangebyscore", {}).get("calls", 0))


def ten_orgs(options: Options, organizations: int, devices_each: int, *, waiting: bool) -> dict[str, Any]:
    """Every organization's rollout created at once, one thread each. `waiting`: created before the
    workers start, so that every organization's work waits for them together, and each completion is
    counted from the first push accepted of any; else created while the workers run, each completion
    counted from the moment the creates were released, the organization whose create returned first
    having the workers to itself until the next."""
    names = organization_ids(*(f"t{i}" for i in range(organizations)))
    sizes = dict.fromkeys(names, devices_each)

    released: list[float] = []

    def create_together(run: Run) -> None:
        gate = threading.Barrier(organizations + 1)
        threads = [creating(run, organization, gate) for organization in names]
        released.append(time.time())
        gate.wait()
        for thread in threads:
            thread.join()

    with running(sizes, options, before_workers=create_together if waiting else None) as run:
        # Waiting, the workers push from their first thread's boot: their CPU is counted from their start.
        meter = CpuMeter(run, from_start=waiting)
        if not waiting:
            create_together(run)
        outcome = settle(run, sizes, released[0])
        times = finish(run, meter, outcome)
    firsts = [
        min((t for t in first_accepted(times, run, o, range(devices_each)) if t is not None), default=None)
        for o in names
    ]
    began = min((t for t in firsts if t is not None), default=released[0]) if waiting else released[0]
    outcome["created_s"] = [round(run.created[o] - released[0], 3) for o in names]
    outcome["workers_started_s"] = round(run.workers_started - released[0], 3)
    outcome["first_accepted_s"] = [None if t is None else round(t - began, 3) for t in firsts]
    completions = [completion_s(times, run, o, began) for o in names]
    outcome["completion_s"] = completions
    if all(c is not None for c in completions):
        done = [c for c in completions if c is not None]
        mean = statistics.fmean(done)
        outcome["mean_s"] = round(mean, 3)
        outcome["max_deviation_pct"] = round(100 * max(abs(c - mean) for c in done) / mean, 1)
        outcome["first_s"], outcome["last_s"] = min(done), max(done)
    return outcome


# --- several runs, and their medians ----------------------------------------------------------------------


def medians(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The median of each number over `runs`, key by key (nested mappings alike); a flag is true when it
    is in every run. A figure missing from some run is the median of those that have it. Lists (one
    figure per organization) are left to the runs."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for r in runs for k in r):
        values = [r[key] for r in runs if key in r and r[key] is not None]
        if values and all(isinstance(v, bool) for v in values):
            out[key] = all(values)
        elif values and all(isinstance(v, Mapping) for v in values):
            out[key] = medians(values)
        elif values and all(isinstance(v, int | float) for v in values):
            out[key] = round(statistics.median(values), 3)
        elif not any(isinstance(v, list) for v in values):
            out[key] = values[0] if values else None
    return out


def repeated(runs: int, *variants: Callable[[], dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Each variant `runs` times, alternating (A, B, A, B …), so that a slow spell of a shared machine
    falls on both."""
    results: list[list[dict[str, Any]]] = [[] for _ in variants]
    for _ in range(runs):
        for out, variant in zip(results, variants, strict=True):
            out.append(variant())
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return results


def ratio(numerator: Any, denominator: Any) -> float | None:
    if isinstance(numerator, int | float) and isinstance(denominator, int | float) and denominator:
        return round(numerator / denominator, 3)
    return None


def beside_alone(
    together: Sequence[Mapping[str, Any]],
    alone: Sequence[Mapping[str, Any]],
    names: tuple[str, str],
    key: str,
) -> dict[str, Any]:
    """The medians of both variants, and `key` with the other organization over `key` alone: each
    round's (a run and the run right after it, on the machine as it was then) and their median, the
    steadier figure on a shared machine; and the ratio of the medians."""
    by_round = [ratio(t.get(key), a.get(key)) for t, a in zip(together, alone, strict=True)]
    present = [r for r in by_round if r is not None]
    summary: dict[str, Any] = {names[0]: medians(together), names[1]: medians(alone)}
    figure = key.removesuffix("_s")
    summary[f"{figure}_vs_alone_by_round"] = by_round
    summary[f"{figure}_vs_alone"] = round(statistics.median(present), 3) if present else None
    summary[f"{figure}_vs_alone_of_medians"] = ratio(summary[names[0]].get(key), summary[names[1]].get(key))
    return summary


def scenario_two_orgs(options: Options, args: argparse.Namespace) -> dict[str, Any]:
    together, alone = repeated(
        args.runs,
        lambda: two_orgs(options, args.devices_a, args.devices_b, with_b=True),
        lambda: two_orgs(options, args.devices_a, args.devices_b, with_b=False),
    )
    return {
        "devices_a": args.devices_a,
        "devices_b": args.devices_b,
        "median": beside_alone(together, alone, ("with_b", "a_alone"), "a_total_s"),
        "runs": {"with_b": together, "a_alone": alone},
    }


def scenario_urgent(options: Options, args: argparse.Namespace) -> dict[str, Any]:
    plan = UrgentPlan(items=args.urgent_items, group=args.urgent_group, idle_items=args.urgent_idle_items)
    paced_devices = args.paced_devices if args.urgent_beside_paced else 0

    def run() -> dict[str, Any]:
        return urgent(options, args.devices_a, plan, paced_devices=paced_devices, rate_per_s=args.wake_rate)

    (runs,) = repeated(args.runs, run)
    return {
        "devices_a": args.devices_a,
        "paced_devices_beside": paced_devices,
        "items_per_kind": plan.items,
        "profile_group": plan.group,
        "median": medians(runs),
        "runs": runs,
    }


def scenario_paced(options: Options, args: argparse.Namespace) -> dict[str, Any]:
    """C beside P, and P alone; with `--paced-on-bulk-lane`, also C beside P with C's chunks served by the
    bulk lane (`paced_lane_max_rate` 0, the code before the paced lane), in the same rounds."""

    def run(with_c: bool, on: Options = options) -> dict[str, Any]:
        return paced(on, args.paced_devices, args.wake_rate, args.devices_a, with_c=with_c)

    variants = [lambda: run(True), lambda: run(False)]
    if args.paced_on_bulk_lane:
        bulk_lane = replace(options, paced_lane_max_rate=0.0)
        variants.append(lambda: run(True, bulk_lane))
    together, alone, *on_bulk = repeated(args.runs, *variants)
    median = beside_alone(together, alone, ("with_c", "p_alone"), "p_total_s")
    runs = {"with_c": together, "p_alone": alone}
    if on_bulk:
        median |= {"with_c_on_bulk_lane": medians(on_bulk[0])}
        runs |= {"with_c_on_bulk_lane": on_bulk[0]}
    return {
        "devices_c": args.paced_devices,
        "wake_rate_per_s": args.wake_rate,
        "devices_p": args.devices_a,
        "median": median,
        "runs": runs,
    }


def scenario_ten_orgs(options: Options, args: argparse.Namespace) -> dict[str, Any]:
    waiting, creating = repeated(
        args.runs,
        lambda: ten_orgs(options, args.orgs, args.devices_per_org, waiting=True),
        lambda: ten_orgs(options, args.orgs, args.devices_per_org, waiting=False),
    )
    return {
        "organizations": args.orgs,
        "devices_each": args.devices_per_org,
        "median": {"waiting": medians(waiting), "creating": medians(creating)},
        "runs": {"waiting": waiting, "creating": creating},
    }


SCENARIOS: dict[str, Callable[[Options, argparse.Namespace], dict[str, Any]]] = {
    "two-orgs": scenario_two_orgs,
    "urgent": scenario_urgent,
    "paced": scenario_paced,
    "ten-orgs": scenario_ten_orgs,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in SCENARIOS:
        p.add_argument(f"--{name}", action="store_true", help=f"run the {name} scenario (all without a flag)")
    p.add_argument(
        "--devices-a", type=int, default=100_000, help="the big rollout's devices (1,000,000: documented run)"
    )
    p.add_argument("--devices-b", type=int, default=500)
    p.add_argument("--urgent-items", type=int, default=20, help="locks, urgent and plain profiles, each")
    p.add_argument("--urgent-group", type=int, default=10, help="devices per urgent or plain profile")
    p.add_argument("--urgent-idle-items", type=int, default=5)
    p.add_argument("--paced-devices", type=int, default=3_000)
    p.add_argument("--wake-rate", type=float, default=50.0, help="C's wake_rate_per_s")
    p.add_argument(
        "--paced-on-bulk-lane", action="store_true", help="paced: also C served by the bulk lane, as before"
    )
    p.add_argument(
        "--urgent-beside-paced",
        action="store_true",
        help="urgent: C's paced rollout (--paced-devices at --wake-rate) created with A's, its chunks on the "
        "urgent lane's process beside the locks",
    )
    p.add_argument("--orgs", type=int, default=10)
    p.add_argument("--devices-per-org", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--latency-ms", type=float, default=40.0)
    p.add_argument(
        "--emulator-nice",
        type=int,
        default=0,
        help="the emulators' niceness beside the benchmark's: -5 (as root) serves them first, as a provider "
        "that does not share the workers' cores",
    )
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--timeout-s", type=float, default=900.0)
    p.add_argument(
        "--redis", help="a Redis URL whose database the runs may empty (a server of the run's own without)"
    )
    p.add_argument(
        "--database-url", help="a migrated database the runs may share (a scratch database per run without)"
    )
    p.add_argument(
        "--out", type=Path, help="the result file (benchmarks/results/fairness-<time>.json without)"
    )
    return p


def run_scenarios(names: Sequence[str], options: Options, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        print(f"{name} …", file=sys.stderr, flush=True)
        started = time.monotonic()
        results[name] = SCENARIOS[name](options, args) | {"seconds": round(time.monotonic() - started)}
        print(json.dumps({name: results[name]["median"]}, indent=2), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    load_before = os.getloadavg()[0]
    names = [n for n in SCENARIOS if getattr(args, n.replace("-", "_"))] or list(SCENARIOS)
    with ExitStack() as stack:
        broker_url = args.redis or stack.enter_context(OwnRedis()).url
        options = Options(
            args.latency_ms,
            args.processes,
            args.threads,
            args.timeout_s,
            broker_url=broker_url,
            database_url=args.database_url,
            emulator_nice=args.emulator_nice,
        )
        results = run_scenarios(names, options, args)
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_1m": [load_before, os.getloadavg()[0]],
    }
    settings = {
        "latency_ms": args.latency_ms,
        "worker_processes": args.processes,
        "threads": args.threads,
        "runs": args.runs,
        "devices_check_in": False,
        "emulator_nice": args.emulator_nice,
    }
    out = args.out or RESULTS / f"fairness-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": machine, "settings": settings, "scenarios": results}
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
