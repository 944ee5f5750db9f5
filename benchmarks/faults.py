"""The fault suite: a rollout on PostgreSQL, Redis and real `dramatiq` worker processes with one fault
injected while it runs, then an audit of what every deployment went through.

    python -m benchmarks.faults                          # every fault, 20,000 devices each
    python -m benchmarks.faults --devices 2000 sigkill redis-restart

The rollouts are the demo's (`sandbox.rollout.Rollout`: the sandbox's emulators and simulated fleet in this
process, the workers in their own, the sweeps on a thread). The faults that restart a service run a PostgreSQL
or Redis server of their own on a free port, so that nothing else on the machine loses its connections.

After each fault the audit asks what the issue asks: does every deployment end in the status its simulated
device dictates, does every recorded transition follow the transition tables, does every status have the
history and the error text that explain it; and it prints the figures: deployments lost, pushes delivered
twice, and the time from the end of the fault to the next push a device received. The acceptance tests run
every fault on a small fleet (`tests/acceptance/test_fault_suite.py`); this command runs them at full size
and writes benchmarks/results/faults-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import Settings
from models.enums import Provider
from models.statuses import OPS_RETRY_FROM, TERMINAL, Kind, Status, may_move
from sandbox import Garbage, GarbageBurst, Storm
from sandbox.processes import WorkerProcesses
from sandbox.registry import Delivery
from sandbox.rollout import Rollout

RESULTS = Path(__file__).resolve().parent / "results"
# Under this many devices (CI's fleets) a rollout is over in seconds: faults are scaled to fit it.
SMALL_FLEET = 2_000
POSTGRES_BIN = Path(os.environ.get("MDMQ_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
# Statuses that must carry the error text an admin acts on.
NEEDS_ERROR_TEXT = frozenset({Status.failed, Status.error_distributing})


# --- what the outside world saw ---------------------------------------------------------------------------


class Deliveries:
    """Every push the emulators delivered to a device of the fleet, with the moment it arrived."""

    def __init__(self, tokens: set[str]) -> None:
        self._tokens = tokens
        self._lock = threading.Condition()
        self.times: list[float] = []
        self.per_provider: Counter[str] = Counter()
        self.at_by_token: dict[str, list[float]] = {}  # wall clock, to read beside the database's times

    def __call__(self, delivery: Delivery) -> None:
        if delivery.token not in self._tokens:
            return  # the certificate watch's probe, or another run's device
        with self._lock:
            self.times.append(time.monotonic())
            self.per_provider[delivery.provider] += 1
            self.at_by_token.setdefault(delivery.token, []).append(time.time())
            self._lock.notify_all()

    def wait_for(self, count: int, timeout_s: float) -> bool:
        """Until `count` pushes have been delivered; False when `timeout_s` passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self.times) >= count, timeout_s)

    def first_after(self, moment: float) -> float | None:
        with self._lock:
            return next((t for t in self.times if t > moment), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self.times)


# --- the audit ---------------------------------------------------------------------------------------------


@dataclass
class Audit:
    fault: str
    organization: str
    devices: int
    deployments: int
    seconds: float
    lost: int  # not in a final status when the run ended
    not_as_dictated: int  # final, but not the status the device dictates
    illegal_transitions: int  # an event the transition tables forbid, or one that does not follow the last
    unexplained: int  # a status no event put there, or a failure without error text
    pushes_delivered: int
    pushes_recorded: int  # the pushes mdmq recorded as accepted (its receipts)
    duplicated_pushes: int  # delivered, but not recorded: sent again after a crash lost the record
    recovery_s: float | None  # the end of the fault (the longest, when it recurs) to the next push delivered
    fault_figures: dict[str, Any] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.not_as_dictated or self.illegal_transitions or self.unexplained)

    def line(self) -> str:
        recovery = "-" if self.recovery_s is None else f"{self.recovery_s:.1f} s"
        return (
            f"{self.fault:<16} {self.deployments:>7} deployments in {self.seconds:6.1f} s: "
            f"lost {self.lost}, not as dictated {self.not_as_dictated}, illegal transitions "
            f"{self.illegal_transitions}, unexplained {self.unexplained}; pushes delivered "
            f"{self.pushes_delivered}, duplicated {self.duplicated_pushes}; recovered in {recovery}"
        )


def audit(
    rollout: Rollout,
    deliveries: Deliveries,
    *,
    fault: str,
    seconds: float,
    fault_ended: float | None,
    figures: dict[str, Any],
    started_at: float,
    recoveries: Sequence[float] = (),
) -> Audit:
    """Read every deployment of the rollout, its events and its receipts back from the database. Each
    deployment that went wrong is shown with its history, the pushes its device received and its check-ins,
    in seconds from `started_at` (wall clock)."""
    organization = rollout.organization_id
    with rollout.app.engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT id, device_id, kind, status, error_message, attempt_count FROM deployment "
                "WHERE organization_id = :org"
            ),
            {"org": organization},
        ).all()
        events = connection.execute(
            sa.text(
                "SELECT e.deployment_id, e.from_status, e.to_status, e.actor, e.at FROM deployment_event e "
                "JOIN deployment d ON d.id = e.deployment_id WHERE d.organization_id = :org ORDER BY e.id"
            ),
            {"org": organization},
        ).all()
        recorded = connection.execute(
            sa.text("SELECT coalesce(sum(device_count), 0) FROM push_receipt WHERE organization_id = :org"),
            {"org": organization},
        ).scalar_one()
    history: dict[str, list[tuple[Status | None, Status, str]]] = {}
    moments: dict[str, list[float]] = {}
    for e in events:
        source = None if e.from_status is None else Status(e.from_status)
        history.setdefault(e.deployment_id, []).append((source, Status(e.to_status), e.actor))
        moments.setdefault(e.deployment_id, []).append(e.at.timestamp())

    def since(moment: float) -> str:
        return f"+{moment - started_at:.1f}"

    lost = wrong = illegal = unexplained = 0
    examples: list[str] = []
    for row in rows:
        kind, status = Kind(row.kind), Status(row.status)
        expected = rollout.fleet.expected_status(row.device_id, kind)
        problems = []
        if status not in TERMINAL[kind]:
            lost += 1
            problems.append(f"left {status.value}")
        steps = history.get(row.id, [])
        if status in TERMINAL[kind] and status is not expected:
            wrong += 1
            path = " > ".join(
                f"{to.value} ({actor} {since(at)})"
                for (_, to, actor), at in zip(steps, moments.get(row.id, []), strict=True)
            )
            device = rollout.fleet.device(row.device_id)
            pushed = ", ".join(map(since, deliveries.at_by_token.get(device.token, []))) or "none"
            checked_in = ", ".join(map(since, device.checked_in_at)) or "none"
            problems.append(
                f"{status.value}, expected {expected.value}; error {row.error_message!r}; history {path}; "
                f"{row.attempt_count} attempts counted; device {device.behaviour.value} pushed at {pushed}, "
                f"checked in at {checked_in} (last {len(device.checked_in_at)} of {device.times_woken})"
            )
        bad_steps = _illegal_steps(kind, steps)
        illegal += bool(bad_steps)
        problems += bad_steps
        current = steps[-1][1] if steps else Status.queued
        if current is not status or (status in NEEDS_ERROR_TEXT and not row.error_message):
            unexplained += 1
            problems.append(f"{status.value} with last event to {current.value}, error {row.error_message!r}")
        if problems and len(examples) < 20:
            examples.append(f"{row.id} {kind.value}: " + "; ".join(problems))
    # The longest wait, from the end of the fault (each restart, when it recurs) to the next push delivered.
    waits = [
        first - moment
        for moment in (recoveries or ([] if fault_ended is None else [fault_ended]))
        if (first := deliveries.first_after(moment)) is not None
    ]
    recovery = max(waits, default=None)
    figures = figures | {"check_in_lag_s": _check_in_lag(rollout, deliveries)}
    return Audit(
        fault=fault,
        organization=organization,
        devices=len(rollout.fleet.devices),
        deployments=len(rows),
        seconds=seconds,
        lost=lost,
        not_as_dictated=wrong,
        illegal_transitions=illegal,
        unexplained=unexplained,
        pushes_delivered=len(deliveries),
        pushes_recorded=int(recorded),
        duplicated_pushes=max(len(deliveries) - int(recorded), 0),
        recovery_s=recovery,
        fault_figures=figures,
        examples=examples,
    )


def _check_in_lag(rollout: Rollout, deliveries: Deliveries) -> dict[str, float]:
    """How long the simulated fleet took from a push to the check-in it caused (the first push since the
    device's check-in before): its backlog, which the demo's retry policy must outwait. From each device's
    last few check-ins."""
    lags = []
    for device in rollout.fleet.devices:
        pushes = deliveries.at_by_token.get(device.token, [])
        previous = 0.0
        for check_in in device.checked_in_at:
            first = next((p for p in pushes if previous < p <= check_in), None)
            if first is not None:
                lags.append(check_in - first)
            previous = check_in
    if not lags:
        return {}
    lags.sort()
    return {
        "median": round(lags[len(lags) // 2], 1),
        "p99": round(lags[int(len(lags) * 0.99)], 1),
        "max": round(lags[-1], 1),
    }


def _illegal_steps(kind: Kind, steps: Sequence[tuple[Status | None, Status, str]]) -> list[str]:
    """Each event must start where the last one ended (creation leaves Queued) and make a move the kind's
    table allows, or be an ops retry of a status only an ops retry leaves."""
    problems = []
    at = Status.queued
    for source, target, actor in steps:
        if source is not at:
            problems.append(f"event {source} -> {target.value} after {at.value}")
        elif not (may_move(kind, at, target) or (target is Status.queued and at in OPS_RETRY_FROM[kind])):
            problems.append(f"illegal {at.value} -> {target.value} by {actor}")
        at = target
    return problems


# --- services of the run's own, to restart --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OwnRedis:
    """A Redis server of the run's own, as the machine's is configured: nothing kept on disk, so a restart
    loses every message it held. That is the harsh case: mdmq must find what the broker forgot."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no"]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        _wait(lambda: _answers(client.ping), 10, "the run's Redis to answer")

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)
            self._process.wait(timeout=30)
            self._process = None

    def __enter__(self) -> OwnRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class OwnPostgres:
    """A PostgreSQL cluster of the run's own on a free port (initdb as the `postgres` user when run as
    root), so that its restart breaks no other connection on the machine."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._directory = Path(tempfile.mkdtemp(prefix="mdmq-faults-pg-"))
        self._data = self._directory / "data"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, stdout=subprocess.DEVNULL)

    def __enter__(self) -> OwnPostgres:
        if os.geteuid() == 0:
            shutil.chown(self._directory, "postgres", "postgres")
        self._run(str(POSTGRES_BIN / "initdb"), "-D", str(self._data), "-U", "postgres", "--auth=trust")
        self.start()
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self._directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += " -c max_connections=200"
        log = str(self._directory / "postgres.log")
        self._run(
            str(POSTGRES_BIN / "pg_ctl"), "-D", str(self._data), "-o", options, "-l", log, "-w", "start"
        )

    def stop(self) -> None:
        self._run(str(POSTGRES_BIN / "pg_ctl"), "-D", str(self._data), "-m", "fast", "-w", "stop")

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)


def _answers(call: Callable[[], object]) -> bool:
    try:
        call()
    except Exception:
        return False
    return True


def _wait(condition: Callable[[], bool], timeout_s: float, what: str, *, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s} s for {what}")
        time.sleep(poll_s)


# --- the faults --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One rollout under one fault: what the fault needs to act and to say when it ended."""

    rollout: Rollout
    deliveries: Deliveries
    redis: OwnRedis | None = None
    postgres: OwnPostgres | None = None
    ended: float | None = None  # monotonic: when the fault was over
    recoveries: list[float] = field(default_factory=list)  # moments to measure recovery from, when several
    figures: dict[str, Any] = field(default_factory=dict)

    def mid_rollout(self, timeout_s: float = 300) -> None:
        """Until a third of the devices had a push: the rollout is well under way."""
        if not self.deliveries.wait_for(max(len(self.rollout.fleet.devices) // 3, 1), timeout_s):
            raise TimeoutError("the rollout never got a third of its pushes out")


@dataclass(frozen=True)
class Fault:
    name: str
    description: str
    inject: Callable[[Run], None]
    own_redis: bool = False
    own_postgres: bool = False


def sigkill_workers(run: Run, *, kills: int = 5, between_s: float = 3.0) -> None:
    """SIGKILL one worker process at a time, `kills` times; Dramatiq stops the rest of the command, and its
    supervisor (`Restart=on-failure` in the systemd unit) starts it again a second later."""
    workers = run.rollout.workers
    assert workers is not None, "real worker processes"
    chooser = random.Random(0)
    run.mid_rollout()
    for kill in range(kills):
        if kill:
            time.sleep(between_s)  # the fault's own rhythm: a kill every few seconds
        _wait(workers.all_up, 60, "the worker processes to be up")
        restarts = workers.restarts
        os.kill(chooser.choice(workers.worker_pids()), signal.SIGKILL)
        _wait(partial(_restarted_since, workers, restarts), 120, "the worker command to be started again")
        run.recoveries.append(time.monotonic())
    run.ended = time.monotonic()  # the last restart
    run.figures["kills"] = kills


def _restarted_since(workers: WorkerProcesses, restarts: int) -> bool:
    return workers.restarts > restarts


def restart_redis(run: Run, *, down_s: float = 3.0) -> None:
    assert run.redis is not None
    _restart(run, run.redis, down_s)


def restart_postgres(run: Run, *, down_s: float = 3.0) -> None:
    assert run.postgres is not None
    _restart(run, run.postgres, down_s)


def _restart(run: Run, server: OwnRedis | OwnPostgres, down_s: float) -> None:
    """Stop `server` mid-rollout, leave it down `down_s` seconds, start it again."""
    run.mid_rollout()
    before = len(run.deliveries)
    server.stop()
    time.sleep(down_s)  # the outage itself
    server.start()
    run.ended = time.monotonic()
    run.figures |= {"down_s": down_s, "pushes_before": before}


def storm_503(run: Run, *, seconds: float = 30.0) -> None:
    """Half of APNs's answers are 503 ServiceUnavailable for `seconds`, from the rollout's start. A fleet of
    fewer than 2,000 devices (CI's) can have every push out well before then, and then nothing would show
    it recover: its storm ends sooner, once it delivered pushes to two thirds as many devices as it has,
    which leaves the rest of the rollout's pushes to come after it."""
    apns = run.rollout.sandbox.apns_faults
    apns.start_storm(Storm("ServiceUnavailable", fraction=0.5, duration_s=seconds))
    started = time.monotonic()
    devices = len(run.rollout.fleet.devices)
    if devices < SMALL_FLEET and run.deliveries.wait_for(2 * devices // 3, seconds):
        apns.stop_storm()
    _wait(lambda: not apns.storm_active, seconds + 30, "the storm to end")
    run.ended = min(time.monotonic(), started + seconds)
    run.figures |= {"storm_s": round(run.ended - started, 1), "failed_by_storm": apns.storm_failures}


def burst_429(run: Run, *, requests: int = 0, retry_after_s: int = 3) -> None:
    """Every APNs and FCM request answered 429 with `Retry-After` until each has turned away `requests`
    (a tenth of the fleet when 0)."""
    sandbox = run.rollout.sandbox
    requests = requests or max(len(run.rollout.fleet.devices) // 10, 20)
    sandbox.apns_faults.start_storm(Storm("TooManyRequests", requests=requests, retry_after_s=retry_after_s))
    sandbox.fcm_faults.start_storm(Storm("QUOTA_EXCEEDED", requests=requests, retry_after_s=retry_after_s))
    _wait(
        lambda: not (sandbox.apns_faults.storm_active or sandbox.fcm_faults.storm_active),
        300,
        "both bursts to end",
    )
    run.ended = time.monotonic()
    run.figures |= {
        "retry_after_s": retry_after_s,
        "turned_away": sandbox.apns_faults.storm_failures + sandbox.fcm_faults.storm_failures,
    }


def goaway(run: Run, *, every: int = 0) -> None:
    """APNs (the HTTP/2 provider) ends each connection with GOAWAY after its `every`-th stream, for the
    whole rollout: every 100th, or every 20th for a fleet under 2,000, whose connections carry fewer."""
    apns = run.rollout.sandbox.apns_faults
    every = every or (100 if len(run.rollout.fleet.devices) >= SMALL_FLEET else 20)
    apns.goaway_every_n_streams = every
    _wait(lambda: _settled(run.rollout), 3_600, "the rollout to settle")
    run.figures |= {"goaway_every_n_streams": every, "goaways": apns.goaways_sent}


def provider_garbage(run: Run, *, requests: int = 4) -> None:
    """Each provider answers `requests` requests with an HTML page (502), then as many with a body that is
    not JSON (400), then cuts as many answers short with the connection; from the start of the rollout. AOSP
    takes many devices per request, so a small rollout may end before it has sent all of its garbage."""
    sandbox = run.rollout.sandbox
    emulators = (sandbox.apns_faults, sandbox.fcm_faults, sandbox.aosp_faults)
    kinds = ((Garbage.html, 502), (Garbage.not_json, 400), (Garbage.truncated, 200))
    for faults in emulators:
        faults.start_garbage(*(GarbageBurst(kind, requests, status) for kind, status in kinds))
    queued = len(emulators) * len(kinds) * requests

    def sent_or_settled() -> bool:
        return not any(f.garbage_left for f in emulators) or _settled(run.rollout)

    _wait(sent_or_settled, 600, "the garbage to be sent")
    run.ended = time.monotonic()
    run.figures |= {"garbage_answers": queued - sum(f.garbage_left for f in emulators)}
    for faults in emulators:
        faults.start_garbage()


def _settled(rollout: Rollout) -> bool:
    return all(
        status in TERMINAL[kind] or status is rollout.fleet.expected_status(device, kind)
        for _, device, kind, status in rollout.wait(0)
    )


def revoke_and_renew(run: Run) -> None:
    """The APNs push certificate revoked a third of the way through: APNs answers 403 BadCertificate
    [A-RESP], and the rest of the APNs work is held, not failed. Once everything that still needs APNs is
    held, the renewed certificate (a new one, the same topic in its UID [A-MDMPUSH]) is stored, which
    releases it. (What the other providers wake goes on meanwhile.)"""
    rollout = run.rollout
    fleet = rollout.fleet
    old_certificate = rollout.keys[Provider.apns].certificate_pem
    assert old_certificate is not None, "the demo's APNs credential is a push certificate"
    run.mid_rollout()
    rollout.registry.revoke_apns_client_certificate(old_certificate.encode("ascii"))
    revoked = time.monotonic()

    def held_ids() -> set[str]:
        with rollout.app.engine.connect() as connection:
            return set(
                connection.execute(
                    sa.text(
                        "SELECT id FROM deployment WHERE organization_id = :org AND hold_reason IS NOT NULL"
                    ),
                    {"org": rollout.organization_id},
                ).scalars()
            )

    def waiting_are_held() -> bool:
        state = rollout.wait(0)
        waiting = {
            d
            for d, device, kind, status in state
            if fleet.device(device).provider is Provider.apns
            and status is not fleet.expected_status(device, kind)
        }
        return bool(waiting) and waiting <= held_ids()

    # A silent device's deployment is held only once its next wake-up is due, up to the policy's longest
    # wait (400 s at 20,000 devices); each look reads the whole rollout.
    _wait(
        waiting_are_held,
        max(300.0, len(fleet.devices) / 10),
        "every unsettled APNs deployment to be held",
        poll_s=0.05 if len(fleet.devices) <= 2_000 else 1.0,
    )
    held = held_ids()
    failed_while_held = [
        d
        for d, device, kind, status in rollout.wait(0)
        if status in TERMINAL[kind] and status is not rollout.fleet.expected_status(device, kind)
    ]
    released = rollout.renew(Provider.apns)
    run.ended = time.monotonic()
    # A held deployment whose device checks in on its own before the renewal moves on and is held no more:
    # what the renewal releases is what was still held, and nothing stays held after it.
    still_held = held_ids()
    run.figures |= {
        "held": len(held),
        "released": len(released),
        "released_all_held": set(released) <= held and not still_held,
        "still_held": len(still_held),
        "failed_while_held": len(failed_while_held),
        "revoked_to_renewed_s": round(run.ended - revoked, 2),
    }


FAULTS: dict[str, Fault] = {
    fault.name: fault
    for fault in (
        Fault("sigkill", "SIGKILL a worker process five times, 3 s apart", sigkill_workers),
        Fault("redis-restart", "Redis restarted, its messages lost, 3 s down", restart_redis, own_redis=True),
        Fault("postgres-restart", "PostgreSQL restarted, 3 s down", restart_postgres, own_postgres=True),
        Fault("503-storm", "half of APNs's answers 503 for 30 s", storm_503),
        Fault("429-burst", "APNs and FCM answer 429 with Retry-After: 3", burst_429),
        Fault("goaway", "GOAWAY after every 100th stream on APNs", goaway),
        Fault("garbage", "HTML pages, bodies that are not JSON, answers cut short", provider_garbage),
        Fault(
            "revoke-renew",
            "the APNs push certificate revoked mid-rollout, then renewed",
            revoke_and_renew,
        ),
    )
}


# --- running one --------------------------------------------------------------------------------------------


@contextmanager
def _stores(
    fault: Fault, postgres_url: str, broker_url: str
) -> Iterator[tuple[str, str, OwnRedis | None, OwnPostgres | None]]:
    """The database and broker URLs of the run: the given ones, or a server of the fault's own."""
    with ExitStack() as stack:
        redis_server = stack.enter_context(OwnRedis()) if fault.own_redis else None
        postgres = stack.enter_context(OwnPostgres()) if fault.own_postgres else None
        database_url = postgres.url if postgres is not None else postgres_url
        yield (
            database_url,
            redis_server.url if redis_server is not None else broker_url,
            redis_server,
            postgres,
        )


def run_fault(
    fault: Fault,
    *,
    devices: int,
    postgres_url: str,
    broker_url: str,
    seed: int = 21,
    timeout_s: float = 600,
    worker_log: Path | None = None,
) -> Audit:
    """One rollout of `devices` devices with `fault` injected; the audit of how it ended."""
    with _stores(fault, postgres_url, broker_url) as (database_url, broker, redis_server, postgres):
        settings = Settings(
            database_url=database_url,
            broker_url=broker,
            metrics_host="127.0.0.1",
            worker_metrics_port=free_port(),
        )
        if not fault.own_redis:
            redis.Redis.from_url(broker).flushdb()  # no messages left by an earlier run
        with Rollout(settings, devices=devices, seed=seed, worker_log=worker_log) as rollout:
            deliveries = Deliveries({d.token for d in rollout.fleet.devices})
            run = Run(rollout, deliveries, redis=redis_server, postgres=postgres)
            rollout.registry.subscribe(run.deliveries)
            failure: list[BaseException] = []

            def inject() -> None:
                try:
                    fault.inject(run)
                except BaseException as error:  # reported with the audit
                    failure.append(error)

            injector = threading.Thread(target=inject, name=f"fault-{fault.name}", daemon=True)
            started, started_at = time.monotonic(), time.time()
            rollout.start()
            injector.start()

            def unless_the_fault_failed(settled: int, total: int) -> None:
                if failure:  # the rollout will not settle as the fault meant it to: stop waiting
                    raise RuntimeError(f"the fault {fault.name} could not be injected") from failure[0]

            rollout.wait(timeout_s, unless_the_fault_failed)
            seconds = time.monotonic() - started
            injector.join(timeout=60)
            if failure:
                raise RuntimeError(f"the fault {fault.name} could not be injected") from failure[0]
            workers = rollout.workers
            figures = run.figures | {"worker_restarts": workers.restarts if workers else 0}
            return audit(
                rollout,
                run.deliveries,
                fault=fault.name,
                seconds=seconds,
                fault_ended=run.ended,
                figures=figures,
                recoveries=run.recoveries,
                started_at=started_at,
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("faults", nargs="*", metavar="FAULT", help=f"of {', '.join(FAULTS)} (all without)")
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for a rollout to settle")
    parser.add_argument(
        "--redis", default=os.environ.get("MDMQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    )
    arguments = parser.parse_args(argv)
    from benchmarks._postgres import scratch_database

    unknown = [name for name in arguments.faults if name not in FAULTS]
    if unknown:
        parser.error(f"unknown fault {', '.join(unknown)}: choose from {', '.join(FAULTS)}")
    chosen = [FAULTS[name] for name in arguments.faults] or list(FAULTS.values())
    audits = []
    logs = Path(tempfile.mkdtemp(prefix="mdmq-faults-"))
    print(f"the worker processes' logs go to {logs}")
    for fault in chosen:
        print(f"{fault.name}: {fault.description}, {arguments.devices} devices", flush=True)
        with scratch_database() as postgres_url:
            result = run_fault(
                fault,
                devices=arguments.devices,
                postgres_url=postgres_url,
                broker_url=arguments.redis,
                timeout_s=arguments.timeout,
                worker_log=logs / f"{fault.name}.log",
            )
        audits.append(result)
        print(result.line(), flush=True)
        print(f"    {json.dumps(result.fault_figures)}", flush=True)
        for example in result.examples:
            print(f"    {example}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"faults-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}.json"
    out.write_text(json.dumps([asdict(a) | {"ok": a.ok} for a in audits], indent=2) + "\n")
    print(f"written to {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    return 0 if all(a.ok for a in audits) else 1


if __name__ == "__main__":
    sys.exit(main())
