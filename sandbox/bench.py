"""The APNs emulator's requests/s and CPU per request: `python -m sandbox.bench [--requests N] [...]`.

The emulator runs in its own process, so that its CPU time is measured apart from the client's, and is asked
for it at the start and end of the measured run. The client (`sandbox.bench_client`) sends `mdm` pushes over
TLS with an MDM push certificate as its client certificate (MDM pushes are certificate-only [A-MDMPUSH]),
`--concurrency` at a time over `--connections` connections, after a warm-up that opens the connections.
The server counts as saturated when its CPU was busy for at least 90% of the run: then requests/s is the
emulator's limit, otherwise the client's or the latency's.

Prints the results and writes them as JSON to `<--output-dir>/sandbox-<timestamp>.json`
(default benchmarks/results, relative to the working directory).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import ssl
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sandbox.bench_client import BenchConnection, tls_context
from sandbox.faults import FaultConfig, Latency
from sandbox.registry import DeviceRegistry
from sandbox.server import Sandbox
from sandbox.tls import issue_mdm_push_certificate

TOPIC = "com.apple.mgmt.External.3e9b1f0c-5a7d-4c2e-8f6b-0d1a2b3c4d5e"
TOKEN = "ab" * 32
BODY = json.dumps({"mdm": "push-magic"}).encode()
WARM_UP_REQUESTS = 200
SATURATED_SHARE = 0.9


@dataclass(frozen=True, slots=True)
class BenchResult:
    requests: int
    connections: int
    concurrency: int
    latency_ms: float
    accepted: int
    elapsed_s: float
    requests_per_s: float
    server_cpu_us_per_request: float
    client_cpu_us_per_request: float
    server_cpu_share: float  # server CPU seconds per wall-clock second of the run
    server_saturated: bool


# -- the emulator's process ------------------------------------------------------------------------------


def _serve(pipe: Connection, latency_ms: float) -> None:
    registry = DeviceRegistry()
    # Issued before the emulator starts, which reads the certificate's CA then; production, as `apns_url`.
    certificate = issue_mdm_push_certificate(registry, topic=TOPIC, environments=["production"])
    registry.add_apns_device(TOKEN, topic=TOPIC, environment="production")
    faults = FaultConfig(latency=Latency.fixed(latency_ms))
    issued = certificate.issued

    async def main() -> None:
        async with Sandbox(registry, tls=True, apns_faults=faults) as sandbox:
            assert sandbox.tls is not None
            pems = (sandbox.tls.ca_pem, issued.cert_pem, issued.key_pem)
            pipe.send((sandbox.ports["apns"], *(pem.decode("ascii") for pem in pems)))
            stopped = asyncio.Event()
            loop = asyncio.get_running_loop()
            threading.Thread(target=_answer_cpu_queries, args=(pipe, loop, stopped), daemon=True).start()
            await stopped.wait()

    asyncio.run(main())


def _answer_cpu_queries(pipe: Connection, loop: asyncio.AbstractEventLoop, stopped: asyncio.Event) -> None:
    # "cpu" is answered with the process's CPU seconds so far (all threads), until "stop".
    while pipe.recv() == "cpu":
        pipe.send(time.process_time())
    loop.call_soon_threadsafe(stopped.set)


def _server_cpu_s(pipe: Connection) -> float:
    pipe.send("cpu")
    cpu_s: float = pipe.recv()
    return cpu_s


# -- the client ------------------------------------------------------------------------------------------


async def _open(port: int, context: ssl.SSLContext, args: Any) -> list[BenchConnection]:
    headers = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", f"127.0.0.1:{port}"),
        (":path", f"/3/device/{TOKEN}"),
        ("apns-topic", TOPIC),
        ("apns-push-type", "mdm"),
    ]
    return [
        await BenchConnection.open("127.0.0.1", port, headers, BODY, context) for _ in range(args.connections)
    ]


async def _send(connections: list[BenchConnection], requests: int, concurrency: int) -> int:
    """Send `requests` pushes, `concurrency` at a time; return how many were accepted (200)."""
    remaining, accepted = requests, 0

    async def worker(connection: BenchConnection) -> None:
        nonlocal remaining, accepted
        while remaining > 0:
            remaining -= 1
            response = await connection.request()
            accepted += response.status == 200

    await asyncio.gather(*(worker(connections[i % len(connections)]) for i in range(concurrency)))
    return accepted


async def _drive(pipe: Connection, port: int, context: ssl.SSLContext, args: Any) -> BenchResult:
    connections = await _open(port, context, args)
    await _send(connections, WARM_UP_REQUESTS, min(args.concurrency, WARM_UP_REQUESTS))
    started, client_started, server_started = time.perf_counter(), time.process_time(), _server_cpu_s(pipe)
    accepted = await _send(connections, args.requests, args.concurrency)
    elapsed_s = time.perf_counter() - started
    client_cpu_s, server_cpu_s = time.process_time() - client_started, _server_cpu_s(pipe) - server_started
    for connection in connections:
        await connection.close()
    share = server_cpu_s / elapsed_s
    return BenchResult(
        requests=args.requests,
        connections=args.connections,
        concurrency=args.concurrency,
        latency_ms=args.latency_ms,
        accepted=accepted,
        elapsed_s=round(elapsed_s, 3),
        requests_per_s=round(args.requests / elapsed_s),
        server_cpu_us_per_request=round(server_cpu_s / args.requests * 1e6, 1),
        client_cpu_us_per_request=round(client_cpu_s / args.requests * 1e6, 1),
        server_cpu_share=round(share, 2),
        server_saturated=share >= SATURATED_SHARE,
    )


# -- the command -----------------------------------------------------------------------------------------


def run(args: Any) -> BenchResult:
    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(theirs, args.latency_ms), daemon=True)
    server.start()
    try:
        port, *pems = ours.recv()
        return asyncio.run(_drive(ours, port, tls_context(*pems), args))
    finally:
        ours.send("stop")
        server.join(timeout=10)


def report(result: BenchResult, output_dir: Path) -> Path:
    saturated = "saturated" if result.server_saturated else "not saturated"
    print(
        f"{result.requests_per_s} requests/s "
        f"({result.accepted}/{result.requests} accepted in {result.elapsed_s} s)\n"
        f"server CPU {result.server_cpu_us_per_request} µs/request "
        f"({result.server_cpu_share:.0%} busy: {saturated})\n"
        f"client CPU {result.client_cpu_us_per_request} µs/request"
    )
    at = datetime.now(UTC)
    document = {
        "benchmark": "sandbox",
        "at": at.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        **asdict(result),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"sandbox-{at.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {path}")
    return path


def parse_args(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--concurrency", type=int, default=200, help="requests in flight, over all connections"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="fixed latency the emulator injects")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if min(args.requests, args.connections, args.concurrency) < 1 or args.latency_ms < 0:
        parser.error(
            "--requests, --connections and --concurrency must be positive, --latency-ms not negative"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    report(result, args.output_dir)
    return 0 if result.accepted == result.requests else 1


if __name__ == "__main__":
    raise SystemExit(main())
