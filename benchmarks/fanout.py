"""Fan-out: N deployments of mixed kinds, from bulk creation to every push accepted and every deployment
terminal, through real `dramatiq` worker processes on PostgreSQL and Redis.

The outside world runs in a process of its own: the APNs, FCM and AOSP emulators over TLS with injected
latency, and a simulated fleet that checks in (through the store, as the MDM check-in server would) when
woken. mdmq runs as in production: `mdmq worker` processes taking dispatch messages from Redis, and sending
MDM wake-ups with the organization's APNs push certificate as the TLS client certificate.

    python -m benchmarks.fanout [--deployments 10000] [--latency-ms 40] [--processes 2] [--threads 8]
                                [--fail-share 0.1]

Then the same number of pushes goes from aioapns alone and from a minimal HTTP/2 client (the emulator's
ceiling), over TLS with a push certificate of their own, the same latency and no database or queue
(`--no-baselines` skips them).

Prints the times, pushes per second (and as ratios to both baselines), CPU seconds per 1,000 deployments
for the workers, PostgreSQL and Redis, the workers' CPU seconds per 1,000 pushes, each worker process's peak
memory and the rows written; writes benchmarks/results/fanout-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import dramatiq
import redis
import sqlalchemy as sa
from dramatiq.brokers.redis import RedisBroker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._postgres import scratch_database
from benchmarks.apns_clients import bare_rates
from config.settings import Settings
from models.enums import Platform
from models.statuses import TERMINAL, Kind
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from sandbox.credentials import (
    EMULATED_APNS_ENVIRONMENT,
    DemoCredential,
    register_credentials,
    store_credentials,
)
from sandbox.processes import settings_environment
from sandbox.rollout import StoreCheckIn
from workers.actors import declare_actors
from workers.app import App
from workers.launch import worker_command, worker_environment
from workers.queues import QUEUES

RESULTS = Path(__file__).resolve().parent / "results"
REDIS_URL = os.environ.get("MDMQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
ORGANIZATION = "bench"
TICKS = os.sysconf("SC_CLK_TCK")
Device = tuple[str, str, str, str | None]  # id, platform, token, push magic


# --- the outside world: emulators and devices, in a process of their own ---------------------------------


def outside_world(
    pipe: Connection,
    devices: int,
    *,
    seed: int,
    latency_ms: float,
    database_url: str,
    check_in: bool,
    fail_share: float = 0.0,
) -> None:
    from sandbox import DeviceRegistry, FaultConfig, Latency, SandboxThread
    from sandbox.fleet import Behaviour, Fleet

    registry = DeviceRegistry()
    keys = register_credentials(registry)  # before the emulators start: they read the push CA then
    environment = EMULATED_APNS_ENVIRONMENT
    started = time.perf_counter()
    fleet = Fleet(
        registry, seed=seed, size=devices, mix={Behaviour.success: 1.0}, apns_environment=environment
    )
    fleet_build_s = time.perf_counter() - started  # the simulated fleet's own cost, for the record
    faults = FaultConfig(latency=Latency.fixed(latency_ms))
    # `fail_share` of APNs and FCM pushes answered 503, each time: turned away, and retried.
    options = {
        "apns_faults": replace(faults, error_rates={"ServiceUnavailable": fail_share} if fail_share else {}),
        "fcm_faults": replace(faults, error_rates={"UNAVAILABLE": fail_share} if fail_share else {}),
        "aosp_faults": faults,
    }
    with SandboxThread(registry, tls=True, **options) as sandbox:
        assert sandbox.tls is not None
        app = App(Settings(database_url=database_url, broker_url="stub://", database_pool_size=20))
        if check_in:  # without, the devices take their pushes and stay silent: the push path alone
            fleet.attach(StoreCheckIn(app, ORGANIZATION), delay_s=(0.001, 0.01), threads=16)
        urls = {
            "apns": sandbox.apns_url,
            "apns_sandbox": sandbox.apns_sandbox_url,
            "fcm": sandbox.fcm_url,
            "aosp": sandbox.aosp_url,
        }
        listed = [(d.id, d.platform.value, d.token, d.push_magic) for d in fleet.devices]
        pipe.send((urls, sandbox.tls.ca_pem, keys, listed, fleet_build_s))
        pipe.recv()  # "stop"
        fleet.close()
        app.close()


# --- what is measured ------------------------------------------------------------------------------------


def cpu_s(pids: Sequence[int]) -> float:
    """User and system CPU seconds of `pids` (those still alive)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def pids_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def peak_rss_mib(pid: int) -> float:
    return _status(pid, "VmHWM") / 1024


def worker_processes(pid: int, threads: int) -> list[int]:
    """The `dramatiq` command's worker processes: its children that run the worker threads, not the fork
    process that serves the metrics."""
    return [child for child in children(pid) if _status(child, "Threads") >= threads]


def cpu_by_pid(pids: Sequence[int]) -> dict[int, float]:
    return {pid: cpu_s([pid]) for pid in pids}


def cpu_since(before: dict[int, float], now: Sequence[int]) -> float:
    """CPU seconds spent since `before` by the processes `now` lists, counting a process started since
    from zero (a PostgreSQL backend opened by a worker's pool during the run)."""
    return sum(cpu_s([pid]) - before.get(pid, 0.0) for pid in now)


@contextmanager
def profiled(pids: Sequence[int], directory: Path | None) -> Iterator[None]:
    """Sample `pids` with py-spy while the block runs; each profile goes to `directory` as collapsed
    stacks, and its heaviest functions are printed."""
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    spies = {
        pid: subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--gil",
                "--output",
                str(directory / f"worker-{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    }
    try:
        yield
    finally:
        for spy in spies.values():
            spy.send_signal(signal.SIGINT)
        for spy in spies.values():
            spy.wait(timeout=60)
    for pid in spies:
        print(heaviest(directory / f"worker-{pid}.txt"), file=sys.stderr)


def heaviest(profile: Path, top: int = 25) -> str:
    """The functions of a py-spy raw profile that the most samples were in (inclusive) and at the top of
    (self), as percentages of all samples."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [frame.rsplit(":", 1)[0] for frame in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    lines = [f"{profile.name}: {total} samples", "  inclusive  self  function"]
    for frame, count in sorted(inclusive.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {100 * count / total:8.1f}% {100 * own.get(frame, 0) / total:5.1f}%  {frame}")
    lines.append("  heaviest by self:")
    for frame, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {100 * count / total:8.1f}%  {frame}")
    return "\n".join(lines)


def own_backends(engine: sa.Engine) -> list[int]:
    """The PostgreSQL backends serving the run's database: its share of the server's CPU, apart from the
    other databases of a shared machine (the server's background writers are left out)."""
    with engine.connect() as connection:
        statement = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        return [int(pid) for pid in connection.execute(sa.text(statement)).scalars()]


def rows_written(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return int(
            connection.execute(
                sa.text("SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables")
            ).scalar_one()
        )


def progress(engine: sa.Engine) -> tuple[int, int, int]:
    """(deployments, pushed: accepted or moved on, terminal)."""
    terminal = sorted({s.value for statuses in TERMINAL.values() for s in statuses})
    with engine.connect() as connection:
        row = connection.execute(
            sa.text(
                "SELECT count(*) AS n, "
                "count(*) FILTER (WHERE receipt_id IS NOT NULL OR status <> 'Queued') AS pushed, "
                "count(*) FILTER (WHERE status = ANY(:terminal)) AS done FROM deployment"
            ),
            {"terminal": terminal},
        ).one()
    return int(row.n), int(row.pushed), int(row.done)


# --- the run ---------------------------------------------------------------------------------------------


def wanted(devices: list[Device], count: int) -> list[NewDeployment]:
    """`count` deployments, two per device: a profile, and an app, a lock (every tenth device) or, on
    Android and AOSP devices, a message (every third)."""
    out: list[NewDeployment] = []
    for i, (device_id, platform_name, _, _) in enumerate(devices):
        second = Kind.app
        if i % 10 == 0:
            second = Kind.security_action
        elif platform_name != Platform.ios.value and i % 3 == 0:
            second = Kind.message
        out += [NewDeployment(device_id, Kind.profile), NewDeployment(device_id, second)]
    return out[:count]


@contextmanager
def workers(settings: Settings, processes: int, threads: int) -> Iterator[subprocess.Popen[bytes]]:
    environment = worker_environment(settings, settings_environment(settings))
    with subprocess.Popen(
        worker_command(processes, threads, urgent_threads=settings.worker_urgent_threads),
        env=environment,
        stdout=subprocess.DEVNULL,
    ) as process:
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)


def wait_for_metrics(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("the workers' metrics server never answered: did they start?")


def wait_for_workers(pid: int, processes: int, threads: int, timeout_s: float) -> None:
    """Until every worker process runs its worker threads: booted, and taking messages. The clock starts
    after, as a rollout's would in production, where the workers were started long before."""
    deadline = time.monotonic() + timeout_s
    while len(worker_processes(pid, threads)) < processes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {processes} worker processes running {threads} threads")
        time.sleep(0.1)


def run(
    deployments: int,
    *,
    latency_ms: float,
    processes: int,
    threads: int,
    timeout_s: float,
    check_in: bool,
    chunk_size: int = 250,
    profile: Path | None = None,
    fail_share: float = 0.0,
) -> dict[str, Any]:
    devices_needed = (deployments + 1) // 2
    redis.Redis.from_url(REDIS_URL).flushdb()
    with scratch_database() as database_url, tempfile.TemporaryDirectory(prefix="mdmq-fanout-") as trusted:
        parent, child = multiprocessing.Pipe()
        world = multiprocessing.get_context("spawn").Process(
            target=outside_world,
            args=(child, devices_needed),
            kwargs={
                "seed": 7,
                "latency_ms": latency_ms,
                "database_url": database_url,
                "check_in": check_in,
                "fail_share": fail_share,
            },
            daemon=True,
        )
        world.start()
        urls, ca_pem, keys, devices, fleet_build_s = parent.recv()
        keys_: dict[Any, DemoCredential] = keys
        ca_file = Path(trusted, "emulators-ca.pem")  # the emulators' CA, for the workers to trust
        ca_file.write_bytes(ca_pem)
        settings = Settings(
            database_url=database_url,
            broker_url=REDIS_URL,
            apns_url=urls["apns"],
            apns_sandbox_url=urls["apns_sandbox"],
            fcm_url=urls["fcm"],
            fcm_token_url=f"{urls['fcm']}/token",
            aosp_url=urls["aosp"],
            push_ca_file=str(ca_file),
            metrics_host="127.0.0.1",
            log_level="WARNING",  # a line per group of pushes answered would be the run's own noise
            worker_metrics_port=19191,
            database_pool_size=threads + 2,
            dispatch_chunk_size=chunk_size,
        )
        app = App(settings)
        engine = app.engine
        with app.session() as s:
            organization = ensure_organization(s, organization_id=ORGANIZATION, name="fan-out benchmark")
            if fail_share:  # pushes turned away go again within a second or two, not the default minutes
                organization.retry_policy = {
                    kind.value: {"push_first_s": 1, "push_max_s": 2} for kind in Kind
                }
            store_credentials(s, ORGANIZATION, keys_)
            add_devices(
                s,
                organization_id=ORGANIZATION,
                devices=[
                    NewDevice(Platform(p), token, push_magic=magic, id=i) for i, p, token, magic in devices
                ],
            )
        actors = declare_actors(app)
        with workers(settings, processes, threads) as dramatiq:
            wait_for_metrics(settings.worker_metrics_port, 60)
            wait_for_workers(dramatiq.pid, processes, threads, 60)
            worker_pids = [dramatiq.pid, *children(dramatiq.pid)]
            before = (
                cpu_s(worker_pids),
                cpu_by_pid(pids_named("postgres")),
                cpu_by_pid(pids_named("redis-server")),
                rows_written(engine),
                cpu_by_pid(own_backends(engine)),
            )
            with profiled(children(dramatiq.pid), profile and profile / str(deployments)):
                created_s, enqueued_s, first_s, pushed_s, done_s = _roll_out(
                    app, actors, devices, deployments, timeout_s=timeout_s, check_in=check_in
                )
            peak = {pid: peak_rss_mib(pid) for pid in worker_processes(dramatiq.pid, threads)}
            after = (
                cpu_s(worker_pids),
                cpu_since(before[1], pids_named("postgres")),
                cpu_since(before[2], pids_named("redis-server")),
                rows_written(engine),
                cpu_since(before[4], own_backends(engine)),
            )
            pushes = _pushes(engine)
        parent.send("stop")
        world.join(timeout=60)
        app.close()
    per_1000 = 1000 / deployments
    return {
        "deployments": deployments,
        "devices": devices_needed,
        "latency_ms": latency_ms,
        "devices_check_in": check_in,
        "worker_processes": processes,
        "threads": threads,
        "chunk_size": chunk_size,
        "fail_share": fail_share,
        "create_s": round(created_s, 2),
        "create_and_enqueue_s": round(enqueued_s, 2),
        "first_push_s": round(first_s, 2) if first_s is not None else None,
        "every_push_accepted_s": round(pushed_s, 2) if pushed_s is not None else None,
        "every_deployment_terminal_s": round(done_s, 2) if done_s is not None else None,
        "pushes": pushes,
        "pushes_per_s": round(pushes / pushed_s, 1) if pushed_s else None,
        # The unit: a push wakes a device for all of its deployments in a chunk (about 1.8 here).
        "worker_cpu_s_per_1000_pushes": round((after[0] - before[0]) * 1000 / pushes, 3) if pushes else None,
        "cpu_s_per_1000": {
            "workers": round((after[0] - before[0]) * per_1000, 3),
            "postgresql": round(after[1] * per_1000, 3),
            "postgresql_run_database": round(after[4] * per_1000, 3),
            "redis": round(after[2] * per_1000, 3),
        },
        "peak_rss_mib_per_worker_process": sorted(round(v, 1) for v in peak.values()),
        "rows_written": after[3] - before[3],
        "fleet_build_s": round(fleet_build_s, 2),
    }


def _roll_out(
    app: App, actors: Any, devices: list[Device], deployments: int, *, timeout_s: float, check_in: bool
) -> tuple[float, float, float | None, float | None, float | None]:
    """Create and enqueue the deployments, and wait: seconds to created, to enqueued, to the first push
    recorded, to every push accepted and to every deployment terminal (None when not reached)."""
    engine = app.engine
    started = time.monotonic()
    started_at = datetime.now(UTC)
    batch = wanted(devices, deployments)
    # `Actors.create`, in its two steps, each timed.
    with app.session() as s:
        redeliver = app.settings.redeliver_after_s
        ids = create_deployments(
            s, organization_id=ORGANIZATION, deployments=batch, redeliver_after_s=redeliver
        )
    created_s = time.monotonic() - started
    actors.enqueue_created(ORGANIZATION, ids, batch)
    enqueued_s = time.monotonic() - started
    pushed_s = done_s = None
    if not check_in:
        pushed_s = _every_message_answered_s(app, started, timeout_s)
    while time.monotonic() - started < timeout_s:
        total, pushed, done = progress(engine)
        now = time.monotonic() - started
        if pushed_s is None and pushed == total:
            pushed_s = now
        if done == total:
            done_s = now
            break
        if pushed_s is not None and not check_in:
            break  # silent devices: nothing becomes terminal before the retry policy's waits
        # The benchmark's own progress poll: often enough to time a short run to some 2% (at 0.5 s, a
        # 10,000 run's 2.4 s read up to 20% long), rarely enough that its count of the table costs little.
        time.sleep(min(max(deployments / 200_000, 0.05), 5.0))
    return created_s, enqueued_s, _first_push_s(engine, started_at), pushed_s, done_s


def _every_message_answered_s(app: App, started: float, timeout_s: float) -> float | None:
    """Seconds from `started` to every dispatch message answered, when every deployment is then pushed
    (accepted, or moved on by its answer): with silent devices, the time to every push accepted. None if
    some deployment is not, and the caller polls the table instead.

    Asking Redis whether a queue still holds a message costs next to nothing, where counting the
    deployments every 50 ms cost PostgreSQL some 5 ms a count at 10,000 (a tenth of a core, in the
    figures it measures). A message is answered once its actor returned: its pushes' answers committed."""
    broker = app.broker
    assert isinstance(broker, RedisBroker)  # the fan-out runs on Redis
    for queue in QUEUES:
        remaining_ms = max(int((timeout_s - (time.monotonic() - started)) * 1000), 1)
        try:
            broker.join(queue, interval=10, timeout=remaining_ms)
        except dramatiq.errors.QueueJoinTimeout:
            return None
    answered_s = time.monotonic() - started
    total, pushed, _ = progress(app.engine)
    return answered_s if pushed == total else None


def _first_push_s(engine: sa.Engine, started_at: datetime) -> float | None:
    """Seconds from the start of the bulk creation to the first push recorded: the start-up a rollout pays
    before its pushes flow (the first messages' wait in the queue, the first connections and tokens)."""
    with engine.connect() as connection:
        first = connection.execute(sa.text("SELECT min(sent_at) FROM push_receipt")).scalar_one()
    if first is None:
        return None
    if first.tzinfo is None:
        first = first.replace(tzinfo=UTC)
    return float((first - started_at).total_seconds())


def _pushes(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT coalesce(sum(device_count), 0) FROM push_receipt")
            ).scalar_one()
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deployments", type=int, nargs="+", default=[10_000])
    parser.add_argument("--latency-ms", type=float, default=40.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=250,
        help="deployments a dispatch message (MDMQ_DISPATCH_CHUNK_SIZE)",
    )
    parser.add_argument(
        "--fail-share",
        type=float,
        default=0.0,
        help="share of APNs and FCM pushes answered 503 (each retried a second or two later)",
    )
    parser.add_argument(
        "--no-check-in",
        dest="check_in",
        action="store_false",
        help="devices take their pushes and stay silent: the push path alone, without the fleet's load",
    )
    parser.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the bare aioapns and raw HTTP/2 runs that follow each fan-out",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the worker processes with py-spy during each rollout; collapsed stacks go to DIR/N/",
    )
    args = parser.parse_args(argv)
    runs = []
    for n in args.deployments:
        result = run(
            n,
            latency_ms=args.latency_ms,
            processes=args.processes,
            threads=args.threads,
            timeout_s=args.timeout_s,
            check_in=args.check_in,
            chunk_size=args.chunk_size,
            profile=args.profile,
            fail_share=args.fail_share,
        )
        if args.baselines and result["pushes_per_s"]:
            # The same number of pushes from aioapns alone, and from a minimal HTTP/2 client (the emulator's
            # ceiling), with no database or queue: mdmq's end-to-end rate as ratios to both.
            bare = bare_rates(result["pushes"], args.latency_ms)
            result["baseline_pushes_per_s"] = bare
            result["ratio_to_aioapns"] = round(result["pushes_per_s"] / bare["aioapns"], 2)
            result["ratio_to_ceiling"] = round(result["pushes_per_s"] / bare["raw"], 3)
        print(json.dumps(result, indent=2))
        runs.append(result)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    (RESULTS / f"fanout-{stamp}.json").write_text(json.dumps({"machine": machine, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
