"""Bulk creation of deployments on PostgreSQL: rows per second, deployments and their creation events.

    python -m benchmarks.bulk_create [--deployments 100000] [--repeat 3]

Creates a scratch database, N devices, then times `create_deployments` for N deployments (device check, id
generation, COPY of deployments and events, commit). Target: >= 50,000 deployments/s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session

from benchmarks._postgres import scratch_database
from models.database import create_engine
from models.enums import Platform
from models.statuses import Kind
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices

TARGET_ROWS_PER_S = 50_000
RESULTS = Path(__file__).parent / "results"
KINDS = (Kind.profile, Kind.app, Kind.security_action, Kind.message)


def run(deployments: int, repeat: int) -> dict[str, object]:
    with scratch_database() as url:
        engine = create_engine(url)
        with Session(engine) as session, session.begin():
            ensure_organization(session, organization_id="bench-org")
            devices = add_devices(
                session,
                organization_id="bench-org",
                devices=[
                    NewDevice(Platform.ios, f"{i:064x}", push_magic=f"magic-{i}") for i in range(deployments)
                ],
            )
        payload = {"identifier": "com.example.wifi", "content": {"SSID_STR": "Corp", "AutoJoin": True}}
        wanted = [NewDeployment(d, KINDS[i % 4], payload) for i, d in enumerate(devices)]
        seconds = []
        for _ in range(repeat):
            started = time.perf_counter()
            with Session(engine) as session, session.begin():
                create_deployments(session, organization_id="bench-org", deployments=wanted)
            seconds.append(time.perf_counter() - started)
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT count(*) FROM deployment")).scalar_one()
        engine.dispose()
    assert rows == deployments * repeat
    best, median = min(seconds), statistics.median(seconds)
    return {
        "benchmark": "bulk_create",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "deployments": deployments,
        "repeat": repeat,
        "seconds": [round(s, 3) for s in seconds],
        "deployments_per_s_median": round(deployments / median),
        "deployments_per_s_best": round(deployments / best),
        "target_deployments_per_s": TARGET_ROWS_PER_S,
        "meets_target": deployments / median >= TARGET_ROWS_PER_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--deployments", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    result = run(args.deployments, args.repeat)

    runs = ", ".join(f"{s:.2f}s" for s in result["seconds"])  # type: ignore[attr-defined]
    print(f"bulk create of {args.deployments:,} deployments on PostgreSQL, {args.repeat} runs: {runs}")
    median, best = result["deployments_per_s_median"], result["deployments_per_s_best"]
    print(f"  median {median:,} rows/s, best {best:,} rows/s")
    print(f"  target >= {TARGET_ROWS_PER_S:,} rows/s: {'met' if result['meets_target'] else 'NOT met'}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bulk_create-{result['at']}.json".replace(":", "")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  written to {path}")


if __name__ == "__main__":
    main()
