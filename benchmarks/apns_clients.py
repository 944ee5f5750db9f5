"""APNs client throughput: mdmq's provider, `aioapns` and a plain httpx[http2] client, one emulator, one run.

The APNs emulator runs in its own process (TLS, N registered devices, fixed injected latency) so that its CPU
does not share a GIL with the client under test. MDM pushes are certificate-only [A-MDMPUSH]: the emulator
issues one MDM push certificate (its subject UID the topic) from a throw-away CA it trusts, and every client
presents it as its TLS client certificate. Every client gets the same work: N MDM wake-ups in batches of
`--batch`, `--in-flight` batches at a time, as dispatch actors would send them.

    python benchmarks/apns_clients.py [--pushes 20000] [--latency-ms 40] [--clients mdmq,aioapns,httpx]

Prints pushes/s and client CPU ms per push for each client and mdmq's ratio to aioapns; writes
benchmarks/results/apns_clients-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOPIC = "com.apple.mgmt.External.7d0e5b6a-3f1c-4e2a-9b8d-1c2f3a4b5c6d"
# The environment the emulator plays, its devices' tokens belong to and the certificate is registered for.
ENVIRONMENT = "production"
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Emulator:
    """Where the emulator listens, the CA its TLS certificate is issued by, and the push certificate (and
    key) it knows, PEM."""

    port: int
    ca_pem: str
    certificate_pem: str = field(repr=False)
    key_pem: str = field(repr=False)

    def tls_context(self) -> ssl.SSLContext:
        """Trusts the emulator and presents the push certificate; ALPN h2."""
        from sandbox.bench_client import tls_context

        return tls_context(self.ca_pem, self.certificate_pem, self.key_pem)


@dataclass(frozen=True)
class ClientRun:
    client: str
    pushes: int
    accepted: int
    seconds: float
    pushes_per_s: float
    client_cpu_ms_per_push: float
    emulator_cpu_ms_per_push: float


def device_tokens(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.randbytes(32).hex() for _ in range(count)]


# --- the emulator process ---------------------------------------------------------------------------------


def serve_emulator(pipe: Connection, tokens: list[str], latency_ms: float) -> None:
    from sandbox import DeviceRegistry, FaultConfig, Latency, Sandbox
    from sandbox.tls import issue_mdm_push_certificate

    registry = DeviceRegistry()
    # Before the emulator starts: it reads the certificate's CA then.
    certificate = issue_mdm_push_certificate(registry, topic=TOPIC, environments=[ENVIRONMENT])
    for token in tokens:
        registry.add_apns_device(token, topic=TOPIC, environment=ENVIRONMENT)
    faults = FaultConfig(latency=Latency.fixed(latency_ms))

    async def run() -> None:
        async with Sandbox(registry, tls=True, apns_faults=faults) as sandbox:  # apns_url: production
            assert sandbox.tls is not None
            issued = certificate.issued
            pipe.send(
                Emulator(
                    sandbox.ports["apns"],
                    sandbox.tls.ca_pem.decode(),
                    issued.cert_pem.decode(),
                    issued.key_pem.decode(),
                )
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            threading.Thread(target=answer_cpu_queries, args=(pipe, loop, stop), daemon=True).start()
            await stop.wait()

    asyncio.run(run())


def answer_cpu_queries(pipe: Connection, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    # Answers "cpu" with the process's CPU seconds (all threads) until told to "stop".
    while (command := pipe.recv()) != "stop":
        assert command == "cpu"
        pipe.send(time.process_time())
    loop.call_soon_threadsafe(stop.set)


# --- the clients ------------------------------------------------------------------------------------------

SendBatch = Callable[[Sequence[str]], Awaitable[int]]


async def mdmq_client(emulator: Emulator) -> tuple[SendBatch, Callable[[], Awaitable[None]]]:
    from workers.providers.apns import ApnsProvider
    from workers.providers.base import Outcome, Push
    from workers.providers.credentials import ApnsCertificate
    from workers.providers.endpoints import ProviderEndpoints

    url = f"https://127.0.0.1:{emulator.port}"
    endpoints = ProviderEndpoints(apns_production=url, ca_pem=emulator.ca_pem)
    credential = ApnsCertificate.from_pem(emulator.certificate_pem, emulator.key_pem)  # topic: the UID
    provider = ApnsProvider(credential, endpoints)

    async def send(tokens: Sequence[str]) -> int:
        pushes = [Push(f"{i:024x}", token=t, push_magic="bench-magic") for i, t in enumerate(tokens)]
        results = await provider.send(pushes)
        return sum(result.outcome is Outcome.accepted for result in results)

    return send, provider.close


async def aioapns_client(emulator: Emulator) -> tuple[SendBatch, Callable[[], Awaitable[None]]]:
    from aioapns import APNs, NotificationRequest, PushType
    from aioapns.connection import APNsProductionClientProtocol

    from sandbox.bench_client import private_pem_file

    # aioapns has no host/port option: its protocol class names Apple's host and port 443.
    class EmulatorProtocol(APNsProductionClientProtocol):
        APNS_SERVER = "127.0.0.1"
        APNS_PORT = emulator.port

    context = ssl.create_default_context(cadata=emulator.ca_pem)
    # aioapns's certificate pool loads `client_cert` (certificate and key, one PEM file) into the context.
    with private_pem_file(emulator.certificate_pem + emulator.key_pem) as path:
        client = APNs(client_cert=path, topic=TOPIC, ssl_context=context)
    client.pool.protocol_class = EmulatorProtocol

    async def send_one(token: str) -> bool:
        request = NotificationRequest(
            device_token=token,
            message={"mdm": "bench-magic"},
            notification_id=str(uuid.uuid4()),
            time_to_live=86_400,
            priority=10,
            push_type=PushType.MDM,
        )
        result = await client.send_notification(request)
        return bool(result.is_successful)

    async def send(tokens: Sequence[str]) -> int:
        return sum(await asyncio.gather(*(send_one(token) for token in tokens)))

    async def close() -> None:
        client.pool.close()

    return send, close


async def httpx_client(emulator: Emulator) -> tuple[SendBatch, Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(
        http2=True,
        verify=emulator.tls_context(),
        base_url=f"https://127.0.0.1:{emulator.port}",
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
        timeout=30.0,
    )
    headers = {
        "apns-topic": TOPIC,
        "apns-push-type": "mdm",
        "apns-priority": "10",
    }
    body = json.dumps({"mdm": "bench-magic"}).encode()

    async def send_one(device: str) -> bool:
        response = await client.post(
            f"/3/device/{device}", content=body, headers={**headers, "apns-id": str(uuid.uuid4())}
        )
        return response.status_code == 200

    async def send(tokens: Sequence[str]) -> int:
        return sum(await asyncio.gather(*(send_one(token) for token in tokens)))

    return send, client.aclose


async def raw_client(
    emulator: Emulator, *, connections: int = 4, streams: int = 250
) -> tuple[SendBatch, Callable[[], Awaitable[None]]]:
    """The emulator's ceiling: `sandbox.bench_client`, a minimal HTTP/2 client that sends pre-encoded
    requests (to one device, the first token, whatever tokens it is given) on `connections` connections,
    `streams` at a time on each."""
    from sandbox.bench_client import BenchConnection

    context = emulator.tls_context()
    port = emulator.port
    opened: list[BenchConnection] = []

    async def send(tokens: Sequence[str]) -> int:
        if not opened:
            headers = [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", f"127.0.0.1:{port}"),
                (":path", f"/3/device/{tokens[0]}"),
                ("apns-topic", TOPIC),
                ("apns-push-type", "mdm"),
            ]
            body = json.dumps({"mdm": "bench-magic"}).encode()
            for _ in range(connections):
                opened.append(await BenchConnection.open("127.0.0.1", port, headers, body, context))
        remaining, accepted = len(tokens), 0

        async def stream(connection: BenchConnection) -> None:
            nonlocal remaining, accepted
            while remaining > 0:
                remaining -= 1
                answer = await connection.request()  # not inside `accepted += …`: it would read first
                accepted += answer.status == 200

        await asyncio.gather(*(stream(opened[i % connections]) for i in range(connections * streams)))
        return accepted

    async def close() -> None:
        for connection in opened:
            await connection.close()

    return send, close


CLIENTS = {"mdmq": mdmq_client, "aioapns": aioapns_client, "httpx": httpx_client, "raw": raw_client}


# --- the driver -------------------------------------------------------------------------------------------


async def drive(send: SendBatch, tokens: list[str], batch: int, in_flight: int) -> int:
    batches = [tokens[i : i + batch] for i in range(0, len(tokens), batch)]
    limit = asyncio.Semaphore(in_flight)

    async def one(chunk: list[str]) -> int:
        async with limit:
            return await send(chunk)

    return sum(await asyncio.gather(*(one(chunk) for chunk in batches)))


def emulator_cpu(pipe: Connection) -> float:
    pipe.send("cpu")
    cpu: float = pipe.recv()
    return cpu


async def measure(name: str, pipe: Connection, emulator: Emulator, args: Any) -> ClientRun:
    tokens = device_tokens(args.pushes, args.seed)
    send, close = await CLIENTS[name](emulator)
    try:
        await drive(send, tokens[: args.batch], args.batch, 1)  # warm-up: connections, TLS handshakes
        started, cpu_started, emulator_started = time.perf_counter(), time.process_time(), emulator_cpu(pipe)
        accepted = await drive(send, tokens, args.batch, args.in_flight)
        seconds = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_started
        emulator_cpu_s = emulator_cpu(pipe) - emulator_started
    finally:
        await close()
    return ClientRun(
        client=name,
        pushes=args.pushes,
        accepted=accepted,
        seconds=round(seconds, 3),
        pushes_per_s=round(accepted / seconds, 1),
        client_cpu_ms_per_push=round(client_cpu * 1000 / args.pushes, 4),
        emulator_cpu_ms_per_push=round(emulator_cpu_s * 1000 / args.pushes, 4),
    )


def parse_args(argv: Sequence[str] | None) -> Any:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pushes", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=40.0)
    parser.add_argument(
        "--batch", type=int, default=1000, help="pushes per send() call, as in a dispatch chunk"
    )
    parser.add_argument("--in-flight", type=int, default=4, help="batches sent at once")
    parser.add_argument(
        "--clients", default="mdmq,aioapns", help=f"comma-separated, from {','.join(CLIENTS)}"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    parser.add_argument("--output", type=Path, default=None, help="default: results/apns_clients-<time>.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [name.strip() for name in args.clients.split(",") if name.strip()]
    with emulator_process(args.pushes, args.seed, args.latency_ms) as (pipe, emulator):
        # Clients alternate over the rounds, so a burst of load from elsewhere on the machine hits all alike;
        # each client's best round is reported.
        rounds = [
            asyncio.run(measure(name, pipe, emulator, args)) for _ in range(args.rounds) for name in names
        ]
        runs = [max((r for r in rounds if r.client == name), key=lambda r: r.pushes_per_s) for name in names]
    report(runs, args)
    return 0 if all(run.accepted == run.pushes for run in runs) else 1


def bare_rates(
    pushes: int, latency_ms: float, clients: Sequence[str] = ("aioapns", "raw")
) -> dict[str, float]:
    """Pushes per second of `clients` alone (no database, no queue), `pushes` each over TLS with a push
    certificate to an APNs emulator with `latency_ms`: the baselines the fan-out benchmark sets its rate
    against."""
    args = parse_args(["--pushes", str(pushes), "--latency-ms", str(latency_ms)])
    with emulator_process(pushes, args.seed, latency_ms) as (pipe, emulator):
        return {name: asyncio.run(measure(name, pipe, emulator, args)).pushes_per_s for name in clients}


@contextmanager
def emulator_process(pushes: int, seed: int, latency_ms: float) -> Iterator[tuple[Connection, Emulator]]:
    """The APNs emulator in a process of its own, knowing the devices of `pushes` tokens and the push
    certificate it issued; yields the pipe that asks it for its CPU time, and where and how to reach it."""
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    emulator = multiprocessing.get_context("spawn").Process(
        target=serve_emulator,
        args=(theirs, device_tokens(pushes, seed), latency_ms),
        daemon=True,
    )
    emulator.start()
    try:
        yield ours, ours.recv()
    finally:
        ours.send("stop")
        emulator.join(timeout=10)


def report(runs: list[ClientRun], args: Any) -> None:
    for run in runs:
        print(
            f"{run.client:8} {run.pushes_per_s:9.1f} pushes/s  {run.client_cpu_ms_per_push:.3f} ms CPU/push "
            f"(one core's worth: {1000 / run.client_cpu_ms_per_push:6.0f} pushes/s) "
            f"(emulator {run.emulator_cpu_ms_per_push:.3f})  "
            f"accepted {run.accepted}/{run.pushes} in {run.seconds}s"
        )
    by_name = {run.client: run for run in runs}
    ratio = cpu_ratio = None
    if "mdmq" in by_name and "aioapns" in by_name:
        ours, theirs = by_name["mdmq"], by_name["aioapns"]
        ratio = round(ours.pushes_per_s / theirs.pushes_per_s, 2)
        cpu_ratio = round(theirs.client_cpu_ms_per_push / ours.client_cpu_ms_per_push, 2)
        print(f"mdmq / aioapns: throughput {ratio}x, client CPU per push {cpu_ratio}x less")
    output = args.output or RESULTS / f"apns_clients-{datetime.now(UTC):%Y-%m-%dT%H%M%S%z}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "apns_clients",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "settings": {
            "pushes": args.pushes,
            "latency_ms": args.latency_ms,
            "batch": args.batch,
            "in_flight": args.in_flight,
            "rounds": args.rounds,
            "transport": "TLS, client (push) certificate, HTTP/2 (ALPN h2), emulator in its own process",
        },
        "runs": [asdict(run) for run in runs],
        "mdmq_over_aioapns": ratio,
        "aioapns_cpu_over_mdmq_cpu": cpu_ratio,
    }
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {output}")


if __name__ == "__main__":
    raise SystemExit(main())
