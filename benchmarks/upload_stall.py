"""/healthz while clients upload FCM service accounts in a loop, each alternating an oversized key (8192-bit
RSA: refused) and a heavy but valid one (a distinct 4096-bit RSA key each time: a costly check every time).

    python -m benchmarks.upload_stall [--clients 20] [--seconds 30] [--idle-seconds 10] [--client-niceness 0]

A scratch PostgreSQL database and `mdmq api` in a process of its own, so that its CPU time is its own; the
clients run in another process, the /healthz probe (one request after another) in this one. First /healthz
idle, the baseline, then under the uploads. Target: p99 under 50 ms under the uploads.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from benchmarks._postgres import scratch_database
from config.settings import Settings
from models.store import ensure_organization
from models.store.tokens import create_token
from tests.integration.security.load import UploadLoad
from workers.app import App

RESULTS = Path(__file__).parent / "results"
TARGET_P99_S = 0.050
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def run(clients: int, seconds: float, idle_seconds: float, client_niceness: int) -> dict[str, Any]:
    with scratch_database() as url:
        app = App(Settings(database_url=url))
        with app.session() as s:
            ensure_organization(s, organization_id="bench")
            token = create_token(s, organization_id="bench", permissions=["mdm.credential.manage"])[1]
        app.close()
        port = _free_port()
        api = _start_api(url, port)
        base = f"http://127.0.0.1:{port}"
        try:
            idle = _probe(base, idle_seconds)
            cpu_before = _cpu_s(api.pid), _children_cpu_s(api.pid)
            answers, loaded = _under_uploads(
                base, token, clients=clients, seconds=seconds, niceness=client_niceness
            )
            cpu_after = _cpu_s(api.pid), _children_cpu_s(api.pid)
        finally:
            stopped_s = _stop(api)
    api_cpu_s = cpu_after[0] - cpu_before[0]
    checks_cpu_s = cpu_after[1] - cpu_before[1]
    result = {
        "benchmark": "upload_stall",
        "clients": clients,
        "client_niceness": client_niceness,
        "seconds": seconds,
        "healthz_idle": _summary(idle),
        "healthz_under_uploads": _summary(loaded),
        "uploads": dict(answers),
        "api_process_cpu_s": round(api_cpu_s, 2),
        "key_check_processes_cpu_s": round(checks_cpu_s, 2),
        "api_stopped_in_s": round(stopped_s, 2),
        "target_p99_s": TARGET_P99_S,
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "at": datetime.now(UTC).isoformat(),
    }
    _report(result)
    return result


def _start_api(database_url: str, port: int) -> subprocess.Popen[bytes]:
    mdmq = Path(sys.executable).with_name("mdmq")
    env = os.environ | {"MDMQ_DATABASE_URL": database_url, "MDMQ_BROKER_URL": "stub://",
                        "MDMQ_LOG_LEVEL": "WARNING"}  # fmt: skip
    # A session of its own, as a service manager starts it: where the kernel groups CPU time by session
    # (autogroup), the clients' load is then not taken out of the API's share.
    api = subprocess.Popen([str(mdmq), "api", "--port", str(port)], env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return api
        except requests.ConnectionError:
            time.sleep(0.1)  # the benchmark's own start-up wait
    api.kill()
    raise RuntimeError("mdmq api did not answer /healthz within 60 s")


def _stop(api: subprocess.Popen[bytes]) -> float:
    """SIGTERM, as a process manager stops it: uvicorn shuts down, the app's pool of key checks with it."""
    started = time.monotonic()
    api.send_signal(signal.SIGTERM)
    try:
        api.wait(timeout=30)
    except subprocess.TimeoutExpired:
        api.kill()
        api.wait()
    return time.monotonic() - started


def _probe(base: str, seconds: float) -> list[float]:
    waits: list[float] = []
    deadline = time.monotonic() + seconds
    with requests.Session() as http:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            answer = http.get(f"{base}/healthz", timeout=30)
            waits.append(time.perf_counter() - started)
            answer.raise_for_status()
    return waits


def _under_uploads(
    base: str, token: str, *, clients: int, seconds: float, niceness: int
) -> tuple[Counter[str], list[float]]:
    url = f"{base}/v1/organizations/bench/credentials/fcm"
    with UploadLoad(url, token, clients=clients, niceness=niceness) as load:
        loaded = _probe(base, seconds)
    return load.outcomes, loaded


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds of the process `pid` (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _children_cpu_s(pid: int) -> float:
    """The CPU seconds of `pid`'s living children: the API's key-check processes."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except (OSError, IndexError, ValueError):
            continue  # a process that ended while we looked
    return total


def _summary(waits: list[float]) -> dict[str, Any]:
    cuts = statistics.quantiles(waits, n=100, method="inclusive")
    return {"requests": len(waits), "p50_ms": round(cuts[49] * 1000, 2), "p99_ms": round(cuts[98] * 1000, 2),
            "max_ms": round(max(waits) * 1000, 2)}  # fmt: skip


def _report(result: dict[str, Any]) -> None:
    idle, loaded = result["healthz_idle"], result["healthz_under_uploads"]
    print(f"/healthz idle:           p50 {idle['p50_ms']} ms, p99 {idle['p99_ms']} ms, "
          f"max {idle['max_ms']} ms ({idle['requests']} requests)")  # fmt: skip
    print(f"/healthz under uploads:  p50 {loaded['p50_ms']} ms, p99 {loaded['p99_ms']} ms, "
          f"max {loaded['max_ms']} ms ({loaded['requests']} requests; target p99 < "
          f"{TARGET_P99_S * 1000:g} ms)")  # fmt: skip
    print(f"uploads from {result['clients']} clients in {result['seconds']:g} s: {result['uploads']}")
    print(f"CPU under uploads: API process {result['api_process_cpu_s']} s, key-check processes "
          f"{result['key_check_processes_cpu_s']} s; API stopped in {result['api_stopped_in_s']} s "
          f"({result['cpus']} CPUs, load average {result['load_average_1m']})")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument(
        "--client-niceness", type=int, default=0, choices=range(20), metavar="0-19",
        help="the clients' priority (their session's, where the kernel groups by session): 0 competes "
        "with the API for the CPUs as other users do; 19 leaves them what the API does not use",
    )  # fmt: skip
    args = parser.parse_args()
    result = run(args.clients, args.seconds, args.idle_seconds, args.client_niceness)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"upload_stall-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
