"""A paced organization's chunks booked in the fair queue beyond the redelivery time are not re-pushed by
the sweep before their slot and then the redelivery time, and are after it: created as enqueued already
(`Actors.create`) or enqueued after their commit (the relay, a retry). Real PostgreSQL, the fair queue of
the in-process broker, no worker: nothing is pushed, so the rows stay Queued and the sweep is probed at
chosen times; then enqueued again by the sweep, behind the first round's slots."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from config.settings import Settings
from models.statuses import Kind
from models.store.organizations import set_fair_share
from models.store.sweeps import due_for, due_repush
from models.types import utcnow
from tests.conftest import MakeDeployments, _new_deployments
from workers.actors import Actors, declare_actors
from workers.app import App
from workers.services.sweeps import repush_unanswered

REDELIVER_S = 10.0
RATE_PER_S = 1.0  # one deployment a chunk, each booked a second after the last
DEVICES = 30  # the last booked 29 s ahead: well beyond the redelivery time


@pytest.fixture
def actors(pg: Engine, postgres_url: str) -> Iterator[Actors]:
    app = App(Settings(database_url=postgres_url, broker_url="stub://", redeliver_after_s=REDELIVER_S))
    yield declare_actors(app)
    app.close()


def _created(actors: Actors, pg: Engine, make_deployments: MakeDeployments) -> list[str]:
    with Session(pg) as s, s.begin():
        wanted = _new_deployments(s, Kind.profile, DEVICES, "slow")
        set_fair_share(s, organization_id="slow", wake_rate_per_s=RATE_PER_S)
    return actors.create("slow", wanted).ids


def _relayed(actors: Actors, pg: Engine, make_deployments: MakeDeployments) -> list[str]:
    ids = make_deployments(pg, Kind.profile, DEVICES, "slow")
    with Session(pg) as s, s.begin():
        set_fair_share(s, organization_id="slow", wake_rate_per_s=RATE_PER_S)
        due = due_for(s, ids=ids)
    actors.enqueue(sorted(due, key=lambda d: ids.index(d.id)))
    return ids


@pytest.mark.parametrize("enqueue", [_created, _relayed], ids=["created", "relayed"])
def test_a_paced_rollout_is_re_pushed_only_after_each_chunks_slot_and_the_redelivery_time(
    pg: Engine,
    actors: Actors,
    make_deployments: MakeDeployments,
    enqueue: Callable[[Actors, Engine, MakeDeployments], list[str]],
) -> None:
    before = utcnow()
    ids = enqueue(actors, pg, make_deployments)
    after = utcnow()
    slot_s = {i: k / RATE_PER_S for k, i in enumerate(ids)}  # the k-th chunk booked k/rate ahead

    def due_at(now: datetime) -> set[str]:
        with Session(pg) as s:
            return {d.id for d in due_repush(s, now=now, limit=10_000)}

    for j in range(-1, DEVICES + 1):
        now = after + timedelta(seconds=REDELIVER_S + j + 0.5)
        due = due_at(now)
        early = [i for i in due if before + timedelta(seconds=slot_s[i] + REDELIVER_S) > now]
        assert not early, f"at +{j}.5 s, {len(early)} re-pushed before their slot and the redelivery time"
        late = [i for i in ids if after + timedelta(seconds=slot_s[i] + REDELIVER_S) <= now and i not in due]
        assert not late, f"at +{j}.5 s, {len(late)} not re-pushed after their slot and the redelivery time"

    end = after + timedelta(seconds=REDELIVER_S + DEVICES + 1)
    with Session(pg) as s, s.begin():
        again = repush_unanswered(s, policy=actors.app.policy, now=end, redeliver_after_s=REDELIVER_S)
    assert {d.id for d in again} == set(ids)

    # Enqueued again by the sweep, they are booked after the first round's slots: the sweep's own
    # redelivery time gives way to the later of each chunk's new slot and then the redelivery time.
    actors.enqueue(again)
    second = {d.id: DEVICES / RATE_PER_S + k / RATE_PER_S for k, d in enumerate(again)}
    now = end + timedelta(seconds=REDELIVER_S + 0.5)
    due = due_at(now)
    early = [i for i in due if before + timedelta(seconds=second[i] + REDELIVER_S) > now]
    assert not early, f"{len(early)} re-pushed again before their second slot and the redelivery time"
    assert len(due) < DEVICES / 2
