"""What a safe create costs: `Actors.create` of N deployments (default 10,000) on PostgreSQL, beside the
create as it was before its `unsent_create` record, and with an `Idempotency-Key` claimed and answered.

    python -m benchmarks.create_safety [--deployments 10000] [--repeat 15]

A scratch database, Dramatiq's in-process broker (the send costs alike in the three). The three are timed in
turn within each round, each first in turn, so that a busy machine weighs on each alike:
- `before`: one transaction of `create_deployments` (written as enqueued), then the send (`enqueue_created`);
- `after`: `Actors.create`: the same, the `unsent_create` row in the transaction, deleted after the send;
- `after_with_key`: the key claimed (a transaction), then `Actors.create` keeping the answer (every id) in
  its transaction, as `POST …/deployments` with an `Idempotency-Key` does.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._postgres import scratch_database
from config.settings import Settings
from models.database import Session
from models.enums import Platform
from models.statuses import Kind
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.idempotency import NewClaim, claim_key, keep_answer
from models.types import utcnow
from workers.actors import Actors, Created, declare_actors
from workers.app import App

RESULTS = Path(__file__).parent / "results"
ORG = "bench"


def run(deployments: int, repeat: int) -> dict[str, object]:
    with scratch_database() as url:
        app = App(Settings(database_url=url, broker_url="stub://"))
        actors = declare_actors(app)
        with app.session() as s:
            ensure_organization(s, organization_id=ORG)
            devices = add_devices(
                s,
                organization_id=ORG,
                devices=[NewDevice(Platform.ios, f"{i:064x}", push_magic="m") for i in range(deployments)],
            )
        wanted = [NewDeployment(d, Kind.profile, {"profile": "com.example.wifi"}) for d in devices]
        ways: dict[str, Callable[[], object]] = {
            "before": lambda: _before(actors, wanted),
            "after": lambda: actors.create(ORG, wanted),
            "after_with_key": lambda: _with_key(actors, wanted),
        }
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        names = list(ways)
        for round_ in range(repeat):
            for name in names[round_ % 3 :] + names[: round_ % 3]:  # each goes first in turn
                started = time.perf_counter()
                ways[name]()
                seconds[name].append(time.perf_counter() - started)
            app.broker.flush_all()
        app.close()
    result: dict[str, object] = {"benchmark": "create_safety", "deployments": deployments, "repeat": repeat}
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"{name}: median {median * 1000:.1f} ms, best {min(times) * 1000:.1f} ms over {repeat}")
        result[name] = {"seconds": [round(t, 4) for t in times], "median_s": round(median, 4)}
    # Paired by round: what each adds to the create of the same round, the machine's swings cancelled.
    added = {
        name: round(statistics.median(map(float.__sub__, seconds[name], seconds["before"])) * 1000, 1)
        for name in ("after", "after_with_key")
    }
    print(f"added to the create of the same round (median): {added} ms")
    return result | {"added_ms_median": added, "at": datetime.now(UTC).isoformat(timespec="seconds")}


def _before(actors: Actors, wanted: list[NewDeployment]) -> None:
    with actors.app.session() as s:
        redeliver = actors.app.settings.redeliver_after_s
        ids = create_deployments(s, organization_id=ORG, deployments=wanted, redeliver_after_s=redeliver)
    actors.enqueue_created(ORG, ids, wanted)


def _with_key(actors: Actors, wanted: list[NewDeployment]) -> None:
    claim = NewClaim(ORG, secrets.token_hex(16), secrets.token_hex(32), secrets.token_hex(16))
    with actors.app.session() as s:
        claim_key(s, claim=claim, now=utcnow(), lock_s=60, keep_s=86_400)

    def keep(session: Session, created: Created) -> None:
        answer = {"status": True, "data": {"rolloutId": created.rollout_id, "ids": created.ids}}
        keep_answer(session, claim=claim, status=202, answer=answer)

    actors.create(ORG, wanted, before_commit=keep)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = run(args.deployments, args.repeat)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"create_safety-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
