"""A fleet imported over HTTP: N devices (default 100,000) in batches of 10,000 to `POST …/devices:batch`.

    python -m benchmarks.devices_import [--devices 100000] [--batch 10000] [--repeat 1]

A scratch PostgreSQL database, the API served by uvicorn on loopback in this process, push magic encrypted
at rest (a secret key is set, as in production). The fleet is half iPhones (token, push magic, topic, two
labels), three tenths Android phones (FCM tokens) and a fifth AOSP devices; each request body is encoded
before the clock starts. Then the same fleet again: every row an update (a TokenUpdate with a new token).
Baseline of the same run: another fleet of the same size enrolled by the store directly (no HTTP, JSON or
row checks). Target: the import of 100,000 new devices in at most 10 s.

Prints the wall time, the requests' times, the CPU seconds of this process (the API and its client) and of
the PostgreSQL backends that served the API; writes `benchmarks/results/devices-import.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa
import uvicorn

from api.app import create_app
from benchmarks._postgres import scratch_database
from config.settings import Settings
from models.enums import PLATFORM_PROVIDER, Platform
from models.ids import new_ids
from models.secrets import KeyRing
from models.store import ensure_organization
from models.store.enrollment import Enrollment, enroll_devices
from models.store.tokens import create_token
from workers.app import App

RESULTS = Path(__file__).parent / "results"
TARGET_S = 10.0
TOPIC = "com.apple.mgmt.External.2c3e8f1a-4b5d-4e6f-8a9b-0c1d2e3f4a5b"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def fleet(count: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i, device_id in enumerate(new_ids(count)):
        share = i % 10
        if share < 5:
            row: dict[str, Any] = {"platform": "ios", "token": secrets.token_hex(32)}
            row |= {"pushMagic": secrets.token_hex(18)}
            row |= {"topic": TOPIC, "labels": ["floor-3", f"group-{i % 50}"]}
        elif share < 8:
            token = f"{secrets.token_urlsafe(16)[:22]}:APA91b{secrets.token_urlsafe(101)[:134]}"
            row = {"platform": "android", "token": token}
        else:
            row = {"platform": "aosp", "token": secrets.token_hex(11)}
        rows.append({"id": device_id} | row)
    return rows


def renewed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same devices with new tokens (and new push magic): a TokenUpdate of every row."""
    # A fleet's platforms follow the rows' order: the new one's are the old one's.
    return [new | {"id": old["id"]} for old, new in zip(rows, fleet(len(rows)), strict=True)]


def run(devices: int, batch: int) -> dict[str, object]:
    with scratch_database() as url:
        settings = Settings(database_url=url, broker_url="stub://", secret_key=KeyRing.generate_key())
        app = App(settings)
        with app.session() as s:
            ensure_organization(s, organization_id="bench")
            token = create_token(s, organization_id="bench", permissions=["mdm.device.manage"])[1]
        server = uvicorn.Server(
            uvicorn.Config(create_app(app), host="127.0.0.1", port=0, log_level="warning")
        )
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)  # the benchmark's own start-up wait
        port = server.servers[0].sockets[0].getsockname()[1]
        endpoint = f"http://127.0.0.1:{port}/v1/organizations/bench/devices:batch"
        rows = fleet(devices)
        result: dict[str, object] = {"benchmark": "devices_import", "devices": devices, "batch": batch}
        with requests.Session() as http:
            result["import"] = _send(
                http, endpoint, token, _bodies(rows, batch), app, what="imported (new devices)"
            )
            updates = _bodies(renewed(rows), batch)
            result["token_update"] = _send(http, endpoint, token, updates, app, what="updated (new tokens)")
        result["store_alone"] = _store_alone(app, fleet(devices), batch)
        verdict = "met" if result["import"]["seconds"] <= TARGET_S else "missed"  # type: ignore[index]
        print(f"target ≤ {TARGET_S:.0f} s for the import of {devices:,}: {verdict}")
        server.should_exit = True
        with app.session() as s:
            stored = s.connection().execute(sa.text("SELECT count(*) FROM device")).scalar_one()
        assert stored == 2 * devices, stored
        app.close()
    return result | {"target_s": TARGET_S, "at": datetime.now(UTC).isoformat()}


def _send(
    http: requests.Session, url: str, token: str, bodies: list[bytes], app: App, *, what: str
) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    database_cpu = _backends_cpu_s(app)
    started, cpu = time.perf_counter(), time.process_time()
    seconds = []
    for body in bodies:
        at = time.perf_counter()
        response = http.post(url, data=body, headers=headers, timeout=300)
        seconds.append(time.perf_counter() - at)
        assert response.status_code == 200, response.text[:500]
        assert response.json()["data"]["refused"] == [], response.text[:500]
    wall = time.perf_counter() - started
    rows = sum(len(json.loads(body)["devices"]) for body in bodies)
    process_cpu = time.process_time() - cpu
    database_cpu = _backends_cpu_s(app) - database_cpu
    print(
        f"{rows:,} devices {what} in {len(bodies)} requests: {wall:.2f} s ({rows / wall:,.0f}/s; requests "
        f"median {statistics.median(seconds):.3f} s, worst {max(seconds):.3f} s); CPU: API and client "
        f"{process_cpu:.2f} s, PostgreSQL {database_cpu:.2f} s"
    )
    return {
        "rows": rows,
        "requests": len(bodies),
        "seconds": round(wall, 3),
        "request_seconds": [round(s, 3) for s in seconds],
        "devices_per_s": round(rows / wall),
        "process_cpu_s": round(process_cpu, 3),
        "postgres_cpu_s": round(database_cpu, 3),
    }


def _store_alone(app: App, rows: list[dict[str, Any]], batch: int) -> dict[str, object]:
    """The baseline of the same run: the same kind of fleet enrolled by the store directly, in transactions
    of `batch`, with neither HTTP nor JSON nor the rows' checks (another organization's devices)."""
    with app.session() as s:
        ensure_organization(s, organization_id="bench-store")
    enrollments = [
        Enrollment(r["id"], Platform(r["platform"]), PLATFORM_PROVIDER[Platform(r["platform"])], r["token"],
                   r.get("pushMagic"), r.get("topic"), tuple(r["labels"]) if "labels" in r else None)
        for r in rows
    ]  # fmt: skip
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(enrollments), batch):
        with app.session() as s:
            enroll_devices(s, organization_id="bench-store", devices=enrollments[i : i + batch])
    wall, process_cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"baseline, the store alone: {len(rows):,} devices in {wall:.2f} s, {process_cpu:.2f} CPU-s")
    return {"rows": len(rows), "seconds": round(wall, 3), "process_cpu_s": round(process_cpu, 3)}


def _bodies(rows: list[dict[str, Any]], batch: int) -> list[bytes]:
    """The requests' bodies, encoded before the clock starts."""
    return [json.dumps({"devices": rows[i : i + batch]}).encode() for i in range(0, len(rows), batch)]


def _backends_cpu_s(app: App) -> float:
    """CPU seconds of the PostgreSQL backends connected to the scratch database (the API's pool), from /proc:
    the server runs on this machine."""
    with app.session() as s:
        pids = (
            s.connection()
            .execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))
            .scalars()
        )
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = run(args.devices, args.batch)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "devices-import.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
