"""A rollout's figures and whole-rollout operations on PostgreSQL: seconds for one rollout's progress (counts,
push state, rate, ETA) against the counts-only statement it grew from, a page of the list with its total,
`mdmq deployments`' total, and a cancel and a retry of a whole rollout against the same by ids.

    python -m benchmarks.rollouts [--rollouts 10] [--size 10000] [--repeat 20]

A scratch database with `rollouts` rollouts of `size` deployments each, in mixed states (pushed, held,
finished). Prints one line per figure (the median of `repeat` runs for reads) and writes a JSON result to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks._postgres import scratch_database
from config.settings import Settings
from models.enums import Actor, Platform
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.deployments import DeploymentFilter, count_deployments
from models.store.devices import NewDevice, add_devices
from models.store.ops import own_deployment_ids
from models.store.rollouts import (
    count_rollouts,
    create_rollout,
    get_rollout,
    recent_rollouts,
    rollout_progress,
)
from models.tables import Deployment, table_of
from workers.app import App
from workers.services.operations import cancel_deployments, cancel_rollout, retry_rollout

DEPLOYMENT = table_of(Deployment)
RESULTS = Path(__file__).parent / "results"


def _populate(app: App, rollouts: int, size: int) -> list[str]:
    with app.session() as s:
        ensure_organization(s, organization_id="acme")
        devices = add_devices(
            s,
            organization_id="acme",
            devices=[NewDevice(Platform.ios, f"{i:064x}", push_magic="m") for i in range(size)],
        )
    made = []
    for _ in range(rollouts):
        wanted = [NewDeployment(d, Kind.profile) for d in devices]
        with app.session() as s:
            rollout_id = create_rollout(s, organization_id="acme", deployments=wanted)
            create_deployments(s, organization_id="acme", deployments=wanted, rollout_id=rollout_id)
        made.append(rollout_id)
    # Mixed states: a third finished, a third pushed and waiting, a tenth held, the rest not pushed yet.
    with app.engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE deployment SET pushed_at = now() - random() * interval '5 minutes',"
                " attempt_count = 1, enqueued_at = now() - interval '6 minutes',"
                " status = CASE WHEN random() < 0.5 THEN 'Completed' ELSE 'Queued' END"
                " WHERE random() < 0.66"
            )
        )
        connection.execute(
            sa.text(
                "UPDATE deployment SET hold_reason = 'APNs certificate expired'"
                " WHERE pushed_at IS NULL AND random() < 0.3"
            )
        )
        connection.execute(sa.text("ANALYZE deployment"))
    return made


def _counts_only(app: App, rollout_id: str) -> None:
    """The statement `rollout_progress` grew from: counts per kind and status, pushes, holds."""
    c = DEPLOYMENT.c
    statement = (
        sa.select(
            c.rollout_id,
            c.kind,
            c.status,
            sa.func.count(),
            sa.func.count(c.pushed_at),
            sa.func.count(c.hold_reason),
            sa.func.min(c.pushed_at),
            sa.func.max(c.pushed_at),
        )
        .where(c.rollout_id.in_([rollout_id]))
        .group_by(c.rollout_id, c.kind, c.status)
    )
    with app.engine.connect() as connection:
        connection.execute(statement).all()


def _progress(app: App, rollout_id: str) -> None:
    with app.session() as s:
        rollout = get_rollout(s, rollout_id=rollout_id)
        assert rollout is not None
        rollout_progress(s, rollouts=[rollout])


def _list_page(app: App) -> None:
    with app.session() as s:
        rollout_progress(s, rollouts=recent_rollouts(s, organization_id="acme", limit=20))
        count_rollouts(s, organization_id="acme")


def _deployments_total(app: App) -> None:
    with app.session() as s:
        count_deployments(s, organization_id="acme", where=DeploymentFilter(status=Status.queued))


def _median_s(run: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _once_s(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def _rollout_ids(app: App, rollout_id: str) -> list[str]:
    with app.engine.connect() as connection:
        statement = sa.select(DEPLOYMENT.c.id).where(DEPLOYMENT.c.rollout_id == rollout_id)
        return list(connection.execute(statement).scalars())


def _cancel_by_ids(app: App, rollout_id: str) -> int:
    """As `POST …/deployments/cancel` would, given every id of the rollout."""
    ids = _rollout_ids(app, rollout_id)
    with app.session() as s:
        own = own_deployment_ids(s, organization_id="acme", ids=ids)
        return len(cancel_deployments(s, ids=own, actor=Actor.api).applied)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rollouts", type=int, default=10)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    options = parser.parse_args()
    with scratch_database() as url:
        app = App(Settings(database_url=url, broker_url="stub://"))
        try:
            result = _measure(app, options.rollouts, options.size, options.repeat)
        finally:
            app.close()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "rollouts.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {path}")


def _measure(app: App, rollouts: int, size: int, repeat: int) -> dict[str, Any]:
    made = _populate(app, rollouts, size)
    first, second, third = made[0], made[1], made[2]
    figures: dict[str, float] = {
        "progress_counts_only_s": _median_s(lambda: _counts_only(app, first), repeat),
        "progress_s": _median_s(lambda: _progress(app, first), repeat),
        "list_page_of_20_with_total_s": _median_s(lambda: _list_page(app), repeat),
        "deployments_total_s": _median_s(lambda: _deployments_total(app), repeat),
    }
    figures["cancel_by_ids_s"], by_ids = _once_s(lambda: _cancel_by_ids(app, second))
    figures["cancel_rollout_s"], chunks = _once_s(lambda: list(cancel_rollout(app.session, rollout_id=third)))
    with app.engine.begin() as connection:
        where = DEPLOYMENT.c.rollout_id == first
        connection.execute(sa.update(DEPLOYMENT).where(where).values(status=Status.failed.value))
    figures["retry_rollout_s"], retried = _once_s(lambda: list(retry_rollout(app.session, rollout_id=first)))
    for name, seconds in figures.items():
        print(f"{name:32} {seconds * 1000:9.1f} ms")
    return {
        "rollouts": rollouts,
        "size": size,
        "deployments": rollouts * size,
        "repeat": repeat,
        "cancelled_by_ids": by_ids,
        "cancelled_by_rollout": sum(len(r.applied) for r in chunks),
        "retried_by_rollout": sum(len(r.applied) for r in retried),
        "seconds": figures,
    }


if __name__ == "__main__":
    main()
