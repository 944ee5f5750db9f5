"""What the queue wait costs a worker: the CPU of observing each first push beside the CPU of the claim
that returns it, and the wall time of the ranking query each worker process runs once in 5 minutes.

    python -m benchmarks.queue_wait [--deployments 100000] [--organizations 1000] [--ranking-rows 1000000]

A scratch PostgreSQL database with N Queued deployments over M organizations (the first has half of them,
the others share the rest). The deployments are claimed in chunks of 500 as a dispatch claims them, and each
chunk's claims observed into a histogram in prometheus_client's multiprocess mode, as a worker process
writes it, in `--runs` passes (3). Then the table is replaced by `--ranking-rows` Queued rows and as many
Completed ones, inserted in one statement, and the ranking timed again. Prints the figures and writes a
JSON result to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Histogram, values
from sqlmodel import Session, select

from benchmarks._postgres import scratch_database
from config.settings import Settings
from models.enums import Platform
from models.statuses import Kind
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.dispatch import claim_for_push
from models.store.organizations import busiest_organizations
from models.tables import Deployment
from models.types import utcnow
from workers.app import App
from workers.queue_wait import BUCKETS_S, NAMED_ORGANIZATIONS, OrganizationLabels, observe_queue_wait

RESULTS = Path(__file__).parent / "results"
CHUNK = 500  # a dispatch message's deployments (MDMQ_DISPATCH_CHUNK_SIZE)


def _populate(app: App, deployments: int, organizations: int) -> None:
    big = deployments // 2
    rest = deployments - big
    shares = [big] + [
        rest // (organizations - 1) + (1 if i < rest % (organizations - 1) else 0)
        for i in range(organizations - 1)
    ]
    serial = 0
    with Session(app.engine) as s, s.begin():
        for n, count in enumerate(shares):
            organization_id = f"org-{n:04d}"
            ensure_organization(s, organization_id=organization_id)
            tokens = [f"{serial + i:064x}" for i in range(count)]
            serial += count
            devices = add_devices(
                s,
                organization_id=organization_id,
                devices=[NewDevice(Platform.ios, t, push_magic="m") for t in tokens],
            )
            create_deployments(
                s,
                organization_id=organization_id,
                deployments=[NewDeployment(d, Kind.profile) for d in devices],
            )


# Rows straight from generate_series: the ranking reads only the organization and the status.
_MORE = sa.text(
    "INSERT INTO deployment (id, organization_id, device_id, kind, payload, urgent, status, attempt_count,"
    " postpone_count, created_at, updated_at)"
    " SELECT lpad(to_hex(g), 24, '0'), CASE WHEN g % 2 = 0 THEN 'org-0000' ELSE 'org-' ||"
    " lpad((g % :organizations)::text, 4, '0') END, lpad(to_hex(g), 24, '0'), 'profile', '{}', false,"
    " CASE WHEN g > :queued THEN 'Completed' ELSE 'Queued' END, 0, 0, now(), now()"
    " FROM generate_series(1, 2 * :queued) g"
)


def _add_rows(app: App, queued: int, organizations: int) -> None:
    with app.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM deployment"))
        connection.execute(_MORE, {"queued": queued, "organizations": organizations})
    with app.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE deployment"))


def _ranking_s(app: App, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        with Session(app.engine) as s:
            busiest_organizations(s, limit=NAMED_ORGANIZATIONS)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _claim_and_observe(
    app: App, ids: list[str], labels: OrganizationLabels, histogram: Histogram
) -> tuple[float, float, int]:
    """Claim every deployment a chunk at a time and observe each chunk's first pushes: the claims' CPU, the
    observations' CPU, how many were observed. The claims are undone after, for the next pass."""
    claim_cpu = observe_cpu = 0.0
    observed = 0
    for start in range(0, len(ids), CHUNK):
        now = utcnow()
        before = time.process_time()
        with app.session() as s:
            claimed = claim_for_push(s, ids=ids[start : start + CHUNK], now=now)
        between = time.process_time()
        observed += observe_queue_wait(app.session, claimed, now=now, labels=labels, histogram=histogram)
        claim_cpu += between - before
        observe_cpu += time.process_time() - between
    with app.engine.begin() as connection:
        connection.execute(sa.text("UPDATE deployment SET attempt_count = 0, pushed_at = NULL"))
    return claim_cpu, observe_cpu, observed


def run(deployments: int, organizations: int, ranking_rows: int, runs: int) -> dict[str, object]:
    # The histogram's values as a worker process keeps them: in a file of the multiprocess directory.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mdmq-bench-metrics-")
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    histogram = Histogram(
        "bench_wait_seconds", "", ["organization"], buckets=BUCKETS_S, registry=CollectorRegistry()
    )
    with scratch_database() as url:
        app = App(Settings(database_url=url, broker_url="stub://"))
        _populate(app, deployments, organizations)
        ranking_s = _ranking_s(app)
        with Session(app.engine) as s:
            ids = sorted(s.exec(select(Deployment.id)))
        labels = OrganizationLabels()
        labels.refresh(app.session, now=utcnow())
        passes = [_claim_and_observe(app, ids, labels, histogram) for _ in range(runs)]
        ranking_more_s = None
        if ranking_rows:
            _add_rows(app, ranking_rows, organizations)
            ranking_more_s = _ranking_s(app)
        app.close()
    assert all(observed == deployments for _, _, observed in passes), passes
    series = {s.labels["organization"] for m in histogram.collect() for s in m.samples}
    return {
        "benchmark": "queue_wait",
        "at": datetime.now(UTC).isoformat(),
        "deployments": deployments,
        "organizations": organizations,
        "organization_label_values": len(series),
        "ranking_query_median_s": round(ranking_s, 4),
        "ranking_rows_queued": ranking_rows,
        "ranking_query_median_s_at_ranking_rows": round(ranking_more_s, 4) if ranking_more_s else None,
        "runs": runs,
        "claim_cpu_s_per_1000_each": [round(c / deployments * 1000, 4) for c, _, _ in passes],
        "observe_cpu_s_per_1000_each": [round(o / deployments * 1000, 4) for _, o, _ in passes],
        "claim_cpu_s_per_1000": round(statistics.median(c for c, _, _ in passes) / deployments * 1000, 4),
        "observe_cpu_s_per_1000": round(statistics.median(o for _, o, _ in passes) / deployments * 1000, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", type=int, default=100_000)
    parser.add_argument("--organizations", type=int, default=1_000)
    parser.add_argument("--ranking-rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    result = run(args.deployments, args.organizations, args.ranking_rows, args.runs)
    for key, value in result.items():
        print(f"{key:28} {value}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "queue-wait.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
