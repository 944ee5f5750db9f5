"""The APNs emulator's requests/s and CPU per request, driven by a raw h2 client: `python -m sandbox.bench`.

The server runs in its own process so that its CPU time is measured apart from the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sandbox.h2client import H2Client
from sandbox.registry import DeviceRegistry
from sandbox.server import Sandbox

TOPIC = "com.apple.mgmt.External.bench"
TOKEN = "ab" * 32


def _serve(key_pem: bytes, ready: Any, done: Any, result: Any) -> None:
    async def main() -> None:
        registry = DeviceRegistry()
        registry.add_apns_key(team_id="TEAMBENCH1", key_id="KEYBENCH01", public_key=key_pem)
        registry.add_apns_device(TOKEN, topic=TOPIC)
        async with Sandbox(registry) as sandbox:
            ready.put(sandbox.ports["apns"])
            before = resource.getrusage(resource.RUSAGE_SELF)
            await asyncio.get_running_loop().run_in_executor(None, done.wait)
            after = resource.getrusage(resource.RUSAGE_SELF)
            result.put((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))

    asyncio.run(main())


async def _drive(port: int, token: str, requests: int, connections: int, concurrency: int) -> float:
    clients = [await H2Client.connect("127.0.0.1", port) for _ in range(connections)]
    headers = [("authorization", f"bearer {token}"), ("apns-topic", TOPIC), ("apns-push-type", "mdm")]
    body = json.dumps({"mdm": "push-magic"}).encode()
    remaining = requests

    async def worker(client: H2Client) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            response = await client.request("POST", f"/3/device/{TOKEN}", headers, body)
            assert response.status == 200, response.body

    started = time.perf_counter()
    await asyncio.gather(*(worker(clients[i % connections]) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    for client in clients:
        await client.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = jwt.encode({"iss": "TEAMBENCH1", "iat": int(time.time())}, key, "ES256", {"kid": "KEYBENCH01"})
    ready: multiprocessing.Queue[int] = multiprocessing.Queue()
    result: multiprocessing.Queue[float] = multiprocessing.Queue()
    done = multiprocessing.Event()
    server = multiprocessing.Process(target=_serve, args=(key_pem, ready, done, result))
    server.start()
    port = ready.get(timeout=30)
    elapsed = asyncio.run(_drive(port, token, args.requests, args.connections, args.concurrency))
    done.set()
    server_cpu_s = result.get(timeout=30)
    server.join()
    print(
        json.dumps(
            {
                "requests": args.requests,
                "connections": args.connections,
                "concurrency": args.concurrency,
                "elapsed_s": round(elapsed, 3),
                "requests_per_s": round(args.requests / elapsed),
                "server_cpu_us_per_request": round(server_cpu_s / args.requests * 1e6, 1),
                "server_cpu_share": round(server_cpu_s / elapsed, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
