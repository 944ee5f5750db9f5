"""Slowloris against `mdmq api`: N connections (default 300) that send a request head one byte a second.

    python -m benchmarks.slowloris [--connections 300] [--duration 30] [--baseline 10]

`mdmq api` runs as the Procfile runs it, in a process of its own, on a scratch PostgreSQL database, with its
default limits. First `/healthz` is timed alone (the baseline); then the attack keeps N slow connections open
for the duration, each reopened as soon as the API closes it, while `/healthz` is timed again. Reported: how
long the API let each slow connection live (target: closed within 15 s), `/healthz` latency p50/p99 in both
phases (target: under 100 ms throughout), and the CPU seconds the API process spent in each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from benchmarks._postgres import scratch_database

RESULTS = Path(__file__).parent / "results"
CLOSED_WITHIN_S = 15.0
HEALTHZ_TARGET_S = 0.1
PROBE_EVERY_S = 0.05
HEAD = b"GET /healthz HTTP/1.1\r\nHost: mdmq\r\nUser-Agent: slowloris\r\nX-Padding: " + b"a" * 4000


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def api_process(database_url: str, port: int, metrics_port: int) -> subprocess.Popen[bytes]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")} | {
        "MDMQ_DATABASE_URL": database_url,
        "MDMQ_API_METRICS_PORT": str(metrics_port),
        "MDMQ_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-c", "from cli.main import main; main()", "api", "--port", str(port)]
    return subprocess.Popen(command, env=environment, stderr=subprocess.DEVNULL)


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_healthz(base_url: str, stop: threading.Event) -> list[float]:
    latencies: list[float] = []
    with requests.Session() as http:
        while not stop.wait(PROBE_EVERY_S):
            started = time.perf_counter()
            response = http.get(base_url + "/healthz", timeout=30)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return latencies


async def slow_client(port: int, until: float, lifetimes: list[float]) -> int:
    """One attacker: a head a byte a second, again each time the API closes it. Returns connections left
    open at the end (not closed yet, but not older than the attack's remaining time either)."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened = loop.time()
        if await _trickle(reader, writer, until):
            lifetimes.append(loop.time() - opened)
        else:
            writer.close()
            return 1
        writer.close()
    return 0


async def _trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, until: float) -> bool:
    """True when the API closed the connection before `until`."""
    loop = asyncio.get_running_loop()
    for byte in HEAD:
        if loop.time() >= until:
            return False
        try:
            writer.write(bytes([byte]))
            await writer.drain()
            if await asyncio.wait_for(reader.read(4096), 1.0) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


async def attack(port: int, connections: int, duration_s: float) -> tuple[list[float], int]:
    until = asyncio.get_running_loop().time() + duration_s
    lifetimes: list[float] = []
    left_open = await asyncio.gather(*(slow_client(port, until, lifetimes) for _ in range(connections)))
    return lifetimes, sum(left_open)


def run_attack(port: int, connections: int, duration_s: float) -> tuple[list[float], int]:
    return asyncio.run(attack(port, connections, duration_s))


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def latency_figures(latencies: list[float]) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
    }


def timed_phase(base_url: str, pid: int, run_phase: Any) -> tuple[Any, list[float], float]:
    """`run_phase()` while /healthz is timed: its result, the latencies, the API's CPU seconds meanwhile."""
    stop = threading.Event()
    latencies: list[float] = []
    prober = threading.Thread(target=lambda: latencies.extend(time_healthz(base_url, stop)), daemon=True)
    cpu_before = cpu_s(pid)
    prober.start()
    try:
        result = run_phase()
    finally:
        stop.set()
        prober.join()
    return result, latencies, cpu_s(pid) - cpu_before


def run(connections: int, duration_s: float, baseline_s: float) -> dict[str, Any]:
    port, metrics_port = free_ports(2)
    base_url = f"http://127.0.0.1:{port}"
    with scratch_database() as database_url:
        api = api_process(database_url, port, metrics_port)
        try:
            _wait_until_it_answers(base_url, api, 120)
            _, baseline, baseline_cpu = timed_phase(base_url, api.pid, lambda: time.sleep(baseline_s))
            # The attackers in a process of their own: they must not hold the prober's GIL.
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as attackers:
                (lifetimes, left_open), during, attack_cpu = timed_phase(
                    base_url,
                    api.pid,
                    lambda: attackers.submit(run_attack, port, connections, duration_s).result(),
                )
        finally:
            api.terminate()
            api.wait(timeout=60)
    return {
        "benchmark": "slowloris",
        "connections": connections,
        "duration_s": duration_s,
        "slow_connections_closed": len(lifetimes),
        "left_open_at_end": left_open,
        "lifetime_s": {
            "p50": round(statistics.median(lifetimes), 2),
            "max": round(max(lifetimes), 2),
            "target_max": CLOSED_WITHIN_S,
        },
        "healthz_baseline": latency_figures(baseline),
        "healthz_under_attack": latency_figures(during),
        "healthz_target_ms": HEALTHZ_TARGET_S * 1000,
        "api_cpu_s": {
            "baseline": round(baseline_cpu, 2),
            "attack": round(attack_cpu, 2),
            "baseline_s": baseline_s,
        },
        "load_average_1m": round(os.getloadavg()[0], 2),  # a shared machine's: context for the figures
        "cpus": os.cpu_count(),
        "at": datetime.now(UTC).isoformat(),
    }


def _wait_until_it_answers(base_url: str, api: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and api.poll() is None:
        try:
            if requests.get(base_url + "/healthz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.2)  # the benchmark's own start-up wait
    raise SystemExit(f"`mdmq api` did not answer on {base_url} within {timeout_s:g} s")


def report(result: dict[str, Any]) -> None:
    lifetime, baseline, during = (
        result["lifetime_s"],
        result["healthz_baseline"],
        result["healthz_under_attack"],
    )
    print(
        f"{result['connections']} slowloris connections for {result['duration_s']:g} s: "
        f"{result['slow_connections_closed']} closed by the API, each after median {lifetime['p50']} s, "
        f"at most {lifetime['max']} s (target <= {CLOSED_WITHIN_S:g} s)"
    )
    for name, figures in (("alone", baseline), ("under attack", during)):
        print(
            f"/healthz {name}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
            f"max {figures['max_ms']} ms over {figures['requests']} requests "
            f"(target < {HEALTHZ_TARGET_S * 1000:g} ms)"
        )
    cpu = result["api_cpu_s"]
    print(f"API CPU: {cpu['baseline']} s alone ({cpu['baseline_s']:g} s), {cpu['attack']} s under attack")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--duration", type=float, default=30.0, help="Seconds the attack lasts.")
    parser.add_argument("--baseline", type=float, default=10.0, help="Seconds /healthz is timed alone.")
    args = parser.parse_args()
    result = run(args.connections, args.duration, args.baseline)
    report(result)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"slowloris-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
