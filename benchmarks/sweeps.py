"""Each scheduler job on N deployments that are all due: seconds, rows, a second run right after (which
must find nothing), and peak Python memory in a pass of its own.

    python -m benchmarks.sweeps [--deployments 100000]

A scratch PostgreSQL database; the in-process broker takes the dispatch messages the sweeps send. Before
each job the deployments are put in the state that job acts on (all of them due), so every job works on all
N. Prints one line per job and writes a JSON result to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session

from benchmarks._postgres import scratch_database
from config.settings import Settings
from models.enums import Platform
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.tables import Deployment, table_of
from models.types import utcnow
from scheduler import jobs
from workers.actors import Actors, declare_actors
from workers.app import App
from workers.queues import QUEUES

DEPLOYMENT = table_of(Deployment)
RESULTS = Path(__file__).parent / "results"
KINDS = (Kind.profile, Kind.app)  # the kinds that have every status the jobs act on (Postponed, Waiting)


def _prepare(app: App, job: str) -> None:
    """Every deployment in the state `job` acts on, and due."""
    now = utcnow()
    long_ago = now - timedelta(days=app.settings.retention_days + 1)
    states: dict[str, dict[str, object]] = {
        "requeue_postponed": {
            "status": Status.postponed.value,
            "next_attempt_at": now - timedelta(seconds=1),
        },
        "repush": {
            "status": Status.queued.value,
            "next_attempt_at": now - timedelta(seconds=1),
            "attempt_count": 1,
        },
        "relay": {
            "status": Status.queued.value,
            "enqueued_at": None,
            "updated_at": long_ago,
            "next_attempt_at": None,
        },
        "stuck": {"status": Status.waiting.value, "updated_at": long_ago},
        "retention": {"status": Status.completed.value, "finished_at": long_ago},
    }
    values = states[job]
    with app.engine.begin() as connection:
        connection.execute(sa.update(DEPLOYMENT).values(**values))
        connection.execute(sa.text("ANALYZE deployment"))


def _drain(actors: Actors) -> int:
    broker = actors.app.broker
    sent = 0
    for queue in QUEUES:
        sent += len(broker.queues[queue].queue)
        broker.flush(queue)
    return sent


def _timed(run: Callable[[], int]) -> tuple[int, float]:
    started = time.perf_counter()
    work = run()
    return work, time.perf_counter() - started


def _peak_mib(run: Callable[[], int]) -> float:
    """Peak Python allocation of `run`, in a pass of its own: tracemalloc roughly halves the speed."""
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def run(deployments: int) -> dict[str, object]:
    figures: dict[str, object] = {}
    with scratch_database() as url:
        app = App(Settings(database_url=url, broker_url="stub://"))
        actors = declare_actors(app)
        with Session(app.engine) as s, s.begin():
            ensure_organization(s, organization_id="bench")
            devices = add_devices(
                s,
                organization_id="bench",
                devices=[NewDevice(Platform.ios, f"{i:064x}", push_magic="m") for i in range(deployments)],
            )
            wanted = [NewDeployment(d, KINDS[i % len(KINDS)]) for i, d in enumerate(devices)]
            create_deployments(s, organization_id="bench", deployments=wanted)
        runs: dict[str, Callable[[datetime], int]] = {
            "requeue_postponed": lambda now: jobs.requeue_postponed_job(actors, now),
            "repush": lambda now: jobs.repush_job(actors, now),
            "relay": lambda now: jobs.relay_job(actors, now),
            "stuck": lambda now: jobs.stuck_job(actors, now),
            "retention": lambda now: jobs.retention_job(actors, now),
        }
        for name, job in runs.items():
            _prepare(app, name)
            work, seconds = _timed(lambda job=job: job(utcnow()))  # type: ignore[misc]
            messages = _drain(actors)
            again, again_s = _timed(lambda job=job: job(utcnow()))  # type: ignore[misc]
            _prepare(app, name)
            peak_mib = _peak_mib(lambda job=job: job(utcnow()))  # type: ignore[misc]
            _drain(actors)
            expected_again = work if name == "stuck" else 0  # stuck counts; it moves nothing
            figures[name] = {
                "rows": work,
                "seconds": round(seconds, 3),
                "rows_per_s": round(work / seconds) if seconds else None,
                "peak_python_mib": round(peak_mib, 1),
                "messages": messages,
                "second_run_rows": again,
                "second_run_seconds": round(again_s, 3),
            }
            print(
                f"{name:18} {work:>7} rows in {seconds:6.2f} s ({work / seconds:>8,.0f}/s), "
                f"peak {peak_mib:5.1f} MiB Python, {messages:>4} messages; "
                f"again: {again} rows in {again_s:.3f} s"
            )
            assert work == deployments, f"{name} did {work} of {deployments}"
            assert again == expected_again, f"{name}: the second run did {again}"
        app.close()
    return {
        "benchmark": "sweeps",
        "deployments": deployments,
        "at": datetime.now(UTC).isoformat(),
        "jobs": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", type=int, default=100_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = run(args.deployments)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"sweeps-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
