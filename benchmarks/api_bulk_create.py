"""Bulk creation over HTTP: one POST of N deployments (default 10,000), from the request to the 202.

    python -m benchmarks.api_bulk_create [--deployments 10000] [--repeat 5] [--without-strict-json]
                                         [--idempotency-key]

A scratch PostgreSQL database, the API served by uvicorn on loopback in this process, Redis as the broker
(MDMQ_BENCH_REDIS_URL; the 202 comes after the dispatch messages are sent). Target: under 2 s per request.
`--without-strict-json` serves a second API without the strict read of JSON bodies (`api/strict_json.py`)
and alternates the requests between the two, to show what that read costs in the same run.
`--idempotency-key` sends each request with a key of its own (`Idempotency-Key`), as a careful client does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import redis
import requests
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.strict_json import StrictJson
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


def run(
    deployments: int, repeat: int, *, without_strict_json: bool = False, idempotency_key: bool = False
) -> dict[str, object]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    with scratch_database() as url:
        apps = [App(Settings(database_url=url, broker_url=REDIS_URL)) for _ in range(1 + without_strict_json)]
        with apps[0].session() as s:
            ensure_organization(s, organization_id="bench")
            devices = add_devices(
                s,
                organization_id="bench",
                devices=[NewDevice(Platform.ios, f"{i:064x}", push_magic="m") for i in range(deployments)],
            )
            token = create_token(s, organization_id="bench", permissions=["mdm.deployment.create"])[1]
        served = [_serve(create_app(app), strict=i == 0) for i, app in enumerate(apps)]
        body: dict[str, Any] = {
            "deployments": [{"deviceId": d, "kind": "profile", "payload": {"p": 1}} for d in devices]
        }
        seconds: list[list[float]] = [[] for _ in served]
        with requests.Session() as http:
            for n in range(repeat):
                for i in range(len(served)) if n % 2 == 0 else reversed(range(len(served))):  # alternate
                    headers = {"Authorization": f"Bearer {token}"}
                    if idempotency_key:
                        headers["Idempotency-Key"] = str(uuid.uuid4())
                    seconds[i].append(_create(http, served[i][1], headers, body, deployments))
        for server, _ in served:
            server.should_exit = True
        for app in apps:
            app.close()
    redis.Redis.from_url(REDIS_URL).flushdb()
    result: dict[str, object] = {
        "benchmark": "api_bulk_create",
        "deployments": deployments,
        "idempotency_key": idempotency_key,
    }
    result |= _figures(seconds[0], f"{deployments} deployments in one request")
    if without_strict_json:
        result["without_strict_json"] = _figures(seconds[1], "the same, without the strict JSON read")
    return result | {"target_s": TARGET_S, "at": datetime.now(UTC).isoformat()}


def _serve(api: FastAPI, *, strict: bool) -> tuple[uvicorn.Server, int]:
    if not strict:
        api.user_middleware = [m for m in api.user_middleware if m.cls is not cast(Any, StrictJson)]
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)  # the benchmark's own start-up wait, not a worker
    return server, server.servers[0].sockets[0].getsockname()[1]


def _create(
    http: requests.Session, port: int, headers: dict[str, str], body: dict[str, Any], deployments: int
) -> float:
    started = time.perf_counter()
    response = http.post(
        f"http://127.0.0.1:{port}/v1/organizations/bench/deployments",
        json=body,
        headers=headers,
        timeout=120,
    )
    seconds = time.perf_counter() - started
    assert response.status_code == 202, response.text[:500]
    assert len(response.json()["data"]["ids"]) == deployments
    return seconds


def _figures(seconds: list[float], what: str) -> dict[str, object]:
    median = statistics.median(seconds)
    print(
        f"{what}: median {median:.3f} s, best {min(seconds):.3f} s, worst {max(seconds):.3f} s "
        f"over {len(seconds)} (target < {TARGET_S} s)"
    )
    return {"seconds": [round(s, 4) for s in seconds], "median_s": round(median, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--without-strict-json", action="store_true")
    parser.add_argument("--idempotency-key", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = run(
        args.deployments,
        args.repeat,
        without_strict_json=args.without_strict_json,
        idempotency_key=args.idempotency_key,
    )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"api_bulk_create-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
