"""Bulk creation over HTTP: one POST of N deployments (default 10,000), from the request to the 202.

    python -m benchmarks.api_bulk_create [--deployments 10000] [--repeat 5]

A scratch PostgreSQL database, the API served by uvicorn on loopback in this process, Redis as the broker
(MDMQ_BENCH_REDIS_URL; the 202 comes after the dispatch messages are sent). Target: under 2 s per request.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import requests
import uvicorn

from api.app import create_app
from benchmarks._postgres import scratch_database
from config.settings import Settings
from models.enums import Platform
from models.store import ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.tokens import create_token
from workers.app import App

RESULTS = Path(__file__).parent / "results"
REDIS_URL = os.environ.get("MDMQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
TARGET_S = 2.0


def run(deployments: int, repeat: int) -> dict[str, object]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    with scratch_database() as url:
        app = App(Settings(database_url=url, broker_url=REDIS_URL))
        with app.session() as s:
            ensure_organization(s, organization_id="bench")
            devices = add_devices(
                s,
                organization_id="bench",
                devices=[NewDevice(Platform.ios, f"{i:064x}", push_magic="m") for i in range(deployments)],
            )
            token = create_token(s, organization_id="bench", permissions=["mdm.deployment.create"])[1]
        server = uvicorn.Server(
            uvicorn.Config(create_app(app), host="127.0.0.1", port=0, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)  # the benchmark's own start-up wait, not a worker
        port = server.servers[0].sockets[0].getsockname()[1]
        body: dict[str, Any] = {
            "deployments": [{"deviceId": d, "kind": "profile", "payload": {"p": 1}} for d in devices]
        }
        seconds = []
        with requests.Session() as http:
            for _ in range(repeat):
                started = time.perf_counter()
                response = http.post(
                    f"http://127.0.0.1:{port}/v1/organizations/bench/deployments",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=120,
                )
                seconds.append(time.perf_counter() - started)
                assert response.status_code == 202, response.text[:500]
                assert len(response.json()["data"]["ids"]) == deployments
        server.should_exit = True
        thread.join()
        app.close()
    redis.Redis.from_url(REDIS_URL).flushdb()
    median = statistics.median(seconds)
    print(
        f"{deployments} deployments in one request: median {median:.3f} s, best {min(seconds):.3f} s, "
        f"worst {max(seconds):.3f} s over {repeat} (target < {TARGET_S} s)"
    )
    return {
        "benchmark": "api_bulk_create",
        "deployments": deployments,
        "seconds": [round(s, 4) for s in seconds],
        "median_s": round(median, 4),
        "target_s": TARGET_S,
        "at": datetime.now(UTC).isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = run(args.deployments, args.repeat)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"api_bulk_create-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
