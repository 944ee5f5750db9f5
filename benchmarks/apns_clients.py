"""APNs client throughput: mdmq's provider, `aioapns` and a plain httpx[http2] client, one emulator, one run.

The APNs emulator runs in its own process (TLS, a registered ES256 key, N registered devices, fixed injected
latency) so that its CPU does not share a GIL with the client under test. Every client gets the same work:
N MDM wake-ups in batches of `--batch`, `--in-flight` batches at a time, as dispatch actors would send them.

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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
TOPIC = "com.apple.mgmt.External.bench"
RESULTS = Path(__file__).resolve().parent / "results"


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


def serve_emulator(
    pipe: Connection, public_pem: bytes, tokens: list[str], latency_ms: float, tls: bool
) -> None:
    from sandbox import DeviceRegistry, FaultConfig, Latency, Sandbox

    registry = DeviceRegistry()
    registry.add_apns_key(team_id=TEAM_ID, key_id=KEY_ID, public_key=public_pem)
    for token in tokens:
        registry.add_apns_device(token, topic=TOPIC)
    faults = FaultConfig(latency=Latency.fixed(latency_ms))

    async def run() -> None:
        async with Sandbox(registry, tls=tls, apns_faults=faults) as sandbox:
            pipe.send((sandbox.ports["apns"], sandbox.tls.ca_pem.decode() if sandbox.tls else ""))
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


async def mdmq_client(
    port: int, ca_pem: str, key_pem: str
) -> tuple[SendBatch, Callable[[], Awaitable[None]]]:
    from workers.providers.apns import ApnsProvider
    from workers.providers.base import Outcome, Push
    from workers.providers.credentials import ApnsTokenKey
    from workers.providers.endpoints import ProviderEndpoints

    url = f"https://127.0.0.1:{port}" if ca_pem else f"http://127.0.0.1:{port}"  # no CA: cleartext h2c
    endpoints = ProviderEndpoints(apns_production=url, ca_pem=ca_pem or None)
    provider = ApnsProvider(ApnsTokenKey(key_pem, KEY_ID, TEAM_ID, TOPIC), endpoints)

    async def send(tokens: Sequence[str]) -> int:
        pushes = [Push(f"{i:024x}", token=t, push_magic="bench-magic") for i, t in enumerate(tokens)]
        results = await provider.send(pushes)
        return sum(result.outcome is Outcome.accepted for result in results)

    return send, provider.close


async def aioapns_client(
    port: int, ca_pem: str, key_pem: str
) -> tuple[SendBatch, Callable[[], Awaitable[None]]]:
    from aioapns import APNs, NotificationRequest, PushType
    from aioapns.connection import APNsProductionClientProtocol

    # aioapns has no host/port option: its protocol class names Apple's host and port 443.
    class EmulatorProtocol(APNsProductionClientProtocol):
        APNS_SERVER = "127.0.0.1"
        APNS_PORT = port

    context = ssl.create_default_context(cadata=ca_pem)
    client = APNs(key=key_pem, key_id=KEY_ID, team_id=TEAM_ID, topic=TOPIC, ssl_context=context)
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


async def httpx_client(
    port: int, ca_pem: str, key_pem: str
) -> tuple[SendBatch, Callable[[], Awaitable[None]]]:
    import httpx
    import jwt

    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else False
    client = httpx.AsyncClient(
        http1=not ca_pem,  # cleartext: h2c with prior knowledge needs HTTP/1.1 switched off
        http2=True,
        verify=context,
        base_url=f"https://127.0.0.1:{port}" if ca_pem else f"http://127.0.0.1:{port}",
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
        timeout=30.0,
    )
    token = jwt.encode(
        {"iss": TEAM_ID, "iat": int(time.time())}, key_pem, algorithm="ES256", headers={"kid": KEY_ID}
    )
    headers = {
        "authorization": f"bearer {token}",
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
    port: int, ca_pem: str, key_pem: str, *, connections: int = 4, streams: int = 250
) -> tuple[SendBatch, Callable[[], Awaitable[None]]]:
    """The emulator's ceiling: `sandbox.bench_client`, a minimal HTTP/2 client that sends pre-encoded
    requests (to one device, the first token, whatever tokens it is given) on `connections` connections,
    `streams` at a time on each."""
    import jwt

    from sandbox.bench_client import BenchConnection

    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else None
    if context is not None:
        context.set_alpn_protocols(["h2"])
    token = jwt.encode(
        {"iss": TEAM_ID, "iat": int(time.time())}, key_pem, algorithm="ES256", headers={"kid": KEY_ID}
    )
    opened: list[BenchConnection] = []

    async def send(tokens: Sequence[str]) -> int:
        if not opened:
            headers = [
                (":method", "POST"),
                (":scheme", "https" if context is not None else "http"),
                (":authority", f"127.0.0.1:{port}"),
                (":path", f"/3/device/{tokens[0]}"),
                ("authorization", f"bearer {token}"),
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


async def measure(
    name: str, pipe: Connection, emulator: tuple[int, str], key_pem: str, args: Any
) -> ClientRun:
    port, ca_pem = emulator
    tokens = device_tokens(args.pushes, args.seed)
    send, close = await CLIENTS[name](port, ca_pem, key_pem)
    try:
        await drive(send, tokens[: args.batch], args.batch, 1)  # warm-up: connections, JWT, TLS
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
    parser.add_argument("--cleartext", action="store_true", help="h2c instead of TLS (mdmq's sandbox mode)")
    parser.add_argument("--output", type=Path, default=None, help="default: results/apns_clients-<time>.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [name.strip() for name in args.clients.split(",") if name.strip()]
    if args.cleartext and "aioapns" in names:
        names.remove("aioapns")
        print("aioapns speaks TLS only: left out of a --cleartext run")
    with emulator_process(args.pushes, args.seed, args.latency_ms, tls=not args.cleartext) as (
        pipe,
        emulator,
    ):
        # Clients alternate over the rounds, so a burst of load from elsewhere on the machine hits all alike;
        # each client's best round is reported.
        rounds = [
            asyncio.run(measure(name, pipe, emulator, KEY_PEM, args))
            for _ in range(args.rounds)
            for name in names
        ]
        runs = [max((r for r in rounds if r.client == name), key=lambda r: r.pushes_per_s) for name in names]
    report(runs, args)
    return 0 if all(run.accepted == run.pushes for run in runs) else 1


def bare_rates(
    pushes: int, latency_ms: float, clients: Sequence[str] = ("aioapns", "raw")
) -> dict[str, float]:
    """Pushes per second of `clients` alone (no database, no queue), `pushes` each over TLS to an APNs
    emulator with `latency_ms`: the baselines the fan-out benchmark sets its rate against."""
    args = parse_args(["--pushes", str(pushes), "--latency-ms", str(latency_ms)])
    with emulator_process(pushes, args.seed, latency_ms, tls=True) as (pipe, emulator):
        return {
            name: asyncio.run(measure(name, pipe, emulator, KEY_PEM, args)).pushes_per_s for name in clients
        }


_KEY = ec.generate_private_key(ec.SECP256R1())
KEY_PEM = _KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()


@contextmanager
def emulator_process(
    pushes: int, seed: int, latency_ms: float, *, tls: bool
) -> Iterator[tuple[Connection, tuple[int, str]]]:
    """The APNs emulator in a process of its own, knowing `KEY_PEM`'s key and the devices of `pushes`
    tokens; yields the pipe that asks it for its CPU time, and its (port, CA PEM or "")."""
    public_pem = _KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    emulator = multiprocessing.get_context("spawn").Process(
        target=serve_emulator,
        args=(theirs, public_pem, device_tokens(pushes, seed), latency_ms, tls),
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
            "transport": ("h2c" if args.cleartext else "TLS, HTTP/2 (ALPN h2)")
            + ", emulator in its own process",
        },
        "runs": [asdict(run) for run in runs],
        "mdmq_over_aioapns": ratio,
        "aioapns_cpu_over_mdmq_cpu": cpu_ratio,
    }
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {output}")


if __name__ == "__main__":
    raise SystemExit(main())
