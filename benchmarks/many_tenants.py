"""Many tenants, one worker process: 1,000 organizations, each with its own APNs push certificate and a small
rollout, served by one `mdmq worker --processes 1` on PostgreSQL and Redis. Measures the worker process's
memory (peak and steady resident set, from /proc), its CPU seconds and the time to every push accepted.

The APNs emulator runs over TLS in a process of its own with a fixed latency and knows every organization's
certificate (one push CA issues them all) and devices. Each phase starts a fresh worker process and serves
the organizations in `--waves` waves `--gap-s` apart (one wave by default: every organization's rollout at
once), each wave's rollouts created and enqueued one after the other, until every push is accepted:

- `eviction_off`: MDMQ_PROVIDER_IDLE_S far beyond the run, every provider kept, as before eviction existed;
- `eviction_on`: MDMQ_PROVIDER_IDLE_S as `--idle-s` (300, the default);
- `before` (with `--before-tree DIR`, a checkout of the code to compare with, run from it on the same
  database, Redis and emulator): first.

The steady figures are read `--gap-s` after the last wave (by default the idle time and 7 s: every
provider idle since has been closed). Peak is the worker process's VmHWM, steady its VmRSS.

    python -m benchmarks.many_tenants [--organizations 1000] [--devices 5] [--latency-ms 40]
                                      [--threads 8] [--idle-s 300] [--waves 1] [--gap-s S]
                                      [--before-tree DIR]

Prints each phase's figures and writes benchmarks/results/many-tenants-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._postgres import scratch_database
from benchmarks.fanout import children, cpu_s, progress, wait_for_metrics, wait_for_workers
from config.settings import Settings
from models.enums import CredentialKind, Platform, Provider, PushEnvironment
from models.statuses import Kind
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.rollouts import create_rollout
from sandbox.processes import settings_environment
from workers.actors import Actors, declare_actors
from workers.app import App
from workers.launch import worker_command, worker_environment
from workers.providers.factory import TICK_MAX_S
from workers.services.credentials import store_credential

RESULTS = Path(__file__).resolve().parent / "results"
REDIS_URL = os.environ.get("MDMQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
# Keys of its own, emptied at the start and left alone by other runs on the same Redis.
NAMESPACE = "mdmq-many-tenants"
METRICS_PORT = 19291
NEVER_S = 1e9  # an idle time no run reaches: eviction off
# (push certificate and key as one PEM text, the devices' tokens) per organization
Tenant = tuple[str, list[str]]


# --- the outside world: the APNs emulator and every organization's certificate ---------------------------


def outside_world(pipe: Connection, organizations: int, devices: int, latency_ms: float) -> None:
    from sandbox import DeviceRegistry, FaultConfig, Latency, SandboxThread
    from sandbox.tls import issue_mdm_push_certificate, make_ca

    registry = DeviceRegistry()
    push_ca = make_ca("many tenants push CA", days=365)
    registry.add_apns_client_ca(push_ca.certificate)  # before the emulator starts: it reads its CAs then
    tenants: list[Tenant] = []
    for _ in range(organizations):
        # A certificate of its own, for a topic of its own [A-MDMPUSH], in Apple's sandbox environment.
        certificate = issue_mdm_push_certificate(
            registry, environments=("development",), ca=push_ca, days=365
        )
        tokens = [secrets.token_hex(32) for _ in range(devices)]
        for token in tokens:
            registry.add_apns_device(token, topic=certificate.topic, environment="development")
        tenants.append((certificate.pem_bundle, tokens))
    faults = FaultConfig(latency=Latency.fixed(latency_ms))
    with SandboxThread(registry, tls=True, apns_faults=faults) as sandbox:
        assert sandbox.tls is not None
        pipe.send((sandbox.apns_url, sandbox.apns_sandbox_url, sandbox.tls.ca_pem, tenants))
        pipe.recv()  # "stop"


# --- the worker process and what is read of it -----------------------------------------------------------


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


def mib(pid: int, field: str) -> float:
    return round(status_kib(pid, field) / 1024, 1)


def scraped_sum(name: str) -> float | None:
    """The sum of a series' values over its labels, from the worker's exposition server; None if absent
    (the code before the gauges existed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")]
    return sum(values) if values else None


@contextmanager
def worker(settings: Settings, threads: int, tree: Path | None) -> Iterator[int]:
    """One worker process (`mdmq worker --processes 1`), from `tree` when given; yields its pid once it
    runs its threads."""
    environment = worker_environment(settings, settings_environment(settings))
    if tree is not None:
        environment["PYTHONPATH"] = str(tree)
    with subprocess.Popen(
        # A tree from before the urgent queue had threads of its own serves both queues on its threads.
        worker_command(1, threads, urgent_threads=0 if tree else settings.worker_urgent_threads),
        env=environment,
        cwd=tree,
        stdout=subprocess.DEVNULL,
    ) as process:
        try:
            wait_for_metrics(METRICS_PORT, 60)
            wait_for_workers(process.pid, 1, threads, 60)
            [pid] = [c for c in children(process.pid) if status_kib(c, "Threads") >= threads]
            yield pid
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)


def commit_of(tree: Path) -> str:
    """The commit a tree is checked out at (and `+changes` when it has uncommitted ones)."""
    git = ["git", "-C", str(tree)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True)
    status = [*git, "status", "--porcelain", "--untracked-files=no"]
    dirty = subprocess.run(status, check=True, capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+changes" if dirty else "")


# --- the run ---------------------------------------------------------------------------------------------


def populate(app: App, tenants: Sequence[Tenant]) -> list[tuple[str, list[str]]]:
    """Each organization with its certificate stored as an operator's upload is, and its devices."""
    made = []
    for index, (pem_bundle, tokens) in enumerate(tenants):
        organization_id = f"tenant-{index:04d}"
        with app.session() as s:
            ensure_organization(s, organization_id=organization_id, name=f"tenant {index}")
            store_credential(
                s,
                organization_id=organization_id,
                provider=Provider.apns,
                kind=CredentialKind.apns_certificate,
                secret=pem_bundle,
                environment=PushEnvironment.sandbox,
            )
            devices = [NewDevice(Platform.ios, token, push_magic=f"magic-{token[:8]}") for token in tokens]
            device_ids = add_devices(s, organization_id=organization_id, devices=devices)
        made.append((organization_id, device_ids))
    return made


def roll_out(app: App, actors: Actors, organizations: Sequence[tuple[str, list[str]]], kind: Kind) -> None:
    """A rollout of `kind` to every device of every organization, created and enqueued one by one."""
    for organization_id, device_ids in organizations:
        wanted = [NewDeployment(device_id, kind) for device_id in device_ids]
        with app.session() as s:
            rollout_id = create_rollout(s, organization_id=organization_id, deployments=wanted)
            ids = create_deployments(
                s, organization_id=organization_id, deployments=wanted, rollout_id=rollout_id
            )
        actors.enqueue_created(organization_id, ids, wanted)


def until_all_pushed(app: App, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        total, pushed, _ = progress(app.engine)
        if pushed == total:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{total - pushed} of {total} deployments not pushed after {timeout_s} s")
        time.sleep(0.25)


def figures(pid: int) -> dict[str, float | None]:
    return {
        "rss_mib": mib(pid, "VmRSS"),
        "providers": scraped_sum("mdmq_push_providers"),
        "connections": scraped_sum("mdmq_push_connections"),
    }


def phase(
    name: str,
    app: App,
    actors: Actors,
    waves: Sequence[Sequence[tuple[str, list[str]]]],
    kind: Kind,
    *,
    threads: int,
    idle_s: float,
    gap_s: float,
    tree: Path | None = None,
) -> dict[str, Any]:
    """One worker process serves `waves` of organizations, `gap_s` apart; the steady figures are read
    `gap_s` after the last."""
    settings = app.settings.model_copy(update={"provider_idle_s": idle_s})
    pushes = sum(len(device_ids) for wave in waves for _, device_ids in wave)
    after_waves = []
    pushing_s = 0.0
    with worker(settings, threads, tree) as pid:
        boot_rss = mib(pid, "VmRSS")
        cpu_before = cpu_s([pid])
        for index, wave in enumerate(waves):
            if index:
                time.sleep(gap_s)
            started = time.monotonic()
            roll_out(app, actors, wave, kind)
            until_all_pushed(app, timeout_s=900)
            pushing_s += time.monotonic() - started
            after_waves.append(figures(pid))
        time.sleep(gap_s)
        cpu = cpu_s([pid]) - cpu_before
        steady = figures(pid)
        peak = mib(pid, "VmHWM")
    result = {
        "phase": name,
        "provider_idle_s": None if idle_s >= NEVER_S else idle_s,
        "code": commit_of(tree or Path(__file__).resolve().parents[1]),
        "pushes": pushes,
        "every_push_accepted_s": round(pushing_s, 2),  # summed over the waves, gaps left out
        "worker_cpu_s": round(cpu, 2),  # the whole phase, gaps included
        "worker_cpu_s_per_1000_pushes": round(cpu * 1000 / pushes, 3),
        "boot_rss_mib": boot_rss,
        "peak_rss_mib": peak,
        "after_each_wave": after_waves,
        "steady": steady,
    }
    print(json.dumps(result), flush=True)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{NAMESPACE}:*"):
        client.delete(key)
    with scratch_database() as database_url, tempfile.TemporaryDirectory(prefix="mdmq-tenants-") as trusted:
        parent, child = multiprocessing.Pipe()
        world = multiprocessing.get_context("spawn").Process(
            target=outside_world,
            args=(child, args.organizations, args.devices, args.latency_ms),
            daemon=True,
        )
        world.start()
        apns_url, apns_sandbox_url, ca_pem, tenants = parent.recv()
        ca_file = Path(trusted, "emulators-ca.pem")
        ca_file.write_bytes(ca_pem)
        settings = Settings(
            database_url=database_url,
            broker_url=REDIS_URL,
            broker_namespace=NAMESPACE,
            apns_url=apns_url,
            apns_sandbox_url=apns_sandbox_url,
            push_ca_file=str(ca_file),
            log_level="WARNING",
            worker_metrics_port=METRICS_PORT,
            database_pool_size=args.threads + 2,
        )
        app = App(settings)
        started = time.monotonic()
        organizations = populate(app, tenants)
        populate_s = time.monotonic() - started
        actors = declare_actors(app)
        size = -(-len(organizations) // args.waves)
        waves = [organizations[i : i + size] for i in range(0, len(organizations), size)]
        # Long enough for every provider idle since the last wave to be closed (and counted so).
        gap_s = args.gap_s if args.gap_s is not None else args.idle_s + TICK_MAX_S + 2
        common = {"threads": args.threads, "gap_s": gap_s}
        phases = []
        if args.before_tree:
            phases.append(
                phase(
                    "before",
                    app,
                    actors,
                    waves,
                    Kind.message,
                    idle_s=NEVER_S,
                    tree=args.before_tree,
                    **common,
                )
            )
        phases.append(phase("eviction_off", app, actors, waves, Kind.profile, idle_s=NEVER_S, **common))
        phases.append(phase("eviction_on", app, actors, waves, Kind.app, idle_s=args.idle_s, **common))
        parent.send("stop")
        world.join(timeout=60)
        app.close()
    return {
        "organizations": args.organizations,
        "devices_per_organization": args.devices,
        "latency_ms": args.latency_ms,
        "worker_processes": 1,
        "threads": args.threads,
        "waves": args.waves,
        "gap_s": gap_s,
        "populate_s": round(populate_s, 1),
        "phases": phases,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--organizations", type=int, default=1_000)
    parser.add_argument("--devices", type=int, default=5, help="devices (and deployments) per organization")
    parser.add_argument("--latency-ms", type=float, default=40.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--idle-s", type=float, default=300.0, help="MDMQ_PROVIDER_IDLE_S of eviction_on")
    parser.add_argument("--waves", type=int, default=1, help="organizations served in this many waves")
    parser.add_argument(
        "--gap-s", type=float, help="between waves, and before the steady figures (default: idle + 7 s)"
    )
    parser.add_argument(
        "--before-tree", type=Path, help="a checkout of the code to compare with, run as a phase of its own"
    )
    args = parser.parse_args(argv)
    result = run(args)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"many-tenants-{stamp}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
