"""The fair queue's promises, the same on each store it lives in: memory (the in-process broker), Redis (the
Redis broker) and PostgreSQL (the RabbitMQ broker)."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pytest
import redis
import sqlalchemy as sa
from sqlmodel import Session

from models.database import Engine
from models.store.fair import CHUNK, CONTENDED_WAIT_S
from tests.services import REDIS_URL, require
from workers.fair import (
    PACE_LIMIT,
    READY_GRACE_S,
    FairLaneName,
    FairQueue,
    advance,
    catch_up_pace,
    catch_up_s,
    paced_chunk_size,
)
from workers.fair.database import DatabaseFairQueue
from workers.fair.memory import MemoryFairQueue
from workers.fair.redis import RedisFairQueue


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


STORES = ["memory", "redis", "postgresql"]


@contextmanager
def _queues(
    request: pytest.FixtureRequest, clock: Clock | None, lanes: Sequence[FairLaneName]
) -> Iterator[list[FairQueue]]:
    """A queue for each of `lanes`, all in the one store `request.param` names (a memory queue each), on
    `clock` (else each store's own)."""
    now: Callable[[], float] = time.time if clock is None else clock
    if request.param == "memory":
        yield [MemoryFairQueue(now) for _ in lanes]
    elif request.param == "redis":
        require(REDIS_URL, "Redis")
        client = redis.Redis.from_url(REDIS_URL)
        namespace = f"mdmq-test-{uuid.uuid4().hex[:8]}"
        try:
            yield [RedisFairQueue(client, namespace, clock, lane=lane) for lane in lanes]
        finally:
            for key in client.scan_iter(f"{namespace}:*"):
                client.delete(key)
            client.close()
    else:
        engine: Engine = request.getfixturevalue("pg")

        @contextmanager
        def session() -> Iterator[Session]:
            with Session(engine) as s, s.begin():
                yield s

        yield [DatabaseFairQueue(session, now, lane=lane) for lane in lanes]


@pytest.fixture(params=STORES)
def fair(request: pytest.FixtureRequest) -> Iterator[FairQueue]:
    """The bulk lane's queue."""
    with _queues(request, None, [FairLaneName.bulk]) as (queue,):
        yield queue


@pytest.fixture
def clock() -> Clock:
    return Clock(1_800_000_000.0)


@pytest.fixture(params=STORES)
def clocked(request: pytest.FixtureRequest, clock: Clock) -> Iterator[FairQueue]:
    """The bulk lane's queue on `clock`."""
    with _queues(request, clock, [FairLaneName.bulk]) as (queue,):
        yield queue


@pytest.fixture(params=STORES)
def lanes(request: pytest.FixtureRequest, clock: Clock) -> Iterator[tuple[FairQueue, FairQueue]]:
    """The bulk lane's queue and the paced lane's, in one store, on `clock`."""
    with _queues(request, clock, [FairLaneName.bulk, FairLaneName.paced]) as (bulk, paced):
        yield bulk, paced


def _chunks(prefix: str, count: int, size: int = 2) -> list[list[str]]:
    return [[f"{prefix}{i}-{j}" for j in range(size)] for i in range(count)]


def _take_all(fair: FairQueue) -> list[str]:
    """The organizations of every chunk, in the order the takes give them."""
    order = []
    while (taken := fair.take(uuid.uuid4().hex)).organization_id is not None:
        order.append(taken.organization_id)
    return order


def test_a_later_organization_is_served_beside_the_first_not_after_it(fair: FairQueue) -> None:
    fair.put("acme", _chunks("a", 20))
    fair.put("beta", _chunks("b", 2))

    order = _take_all(fair)

    assert sorted(order) == ["acme"] * 20 + ["beta"] * 2
    assert order[:4].count("beta") == 2, order


def test_weights_share_the_lane_in_their_ratio(fair: FairQueue) -> None:
    fair.put("acme", _chunks("a", 30), weight=2)
    fair.put("beta", _chunks("b", 30), weight=1)

    first = _take_all(fair)[:30]

    assert first.count("acme") == 20, first
    assert first.count("beta") == 10, first


def test_weights_share_the_pushes_in_their_ratio_whatever_the_chunks_sizes(fair: FairQueue) -> None:
    fair.put("acme", _chunks("a", 40, size=10), weight=2)
    fair.put("beta", _chunks("b", 100, size=2), weight=1)

    pushes = {"acme": 0, "beta": 0}
    for _ in range(70):
        taken = fair.take(uuid.uuid4().hex)
        assert taken.organization_id is not None
        assert taken.deployment_ids is not None
        pushes[taken.organization_id] += len(taken.deployment_ids)

    # Deployments 2:1 (counted in chunks, acme would take two turns of three: 470 pushes to beta's 46).
    assert 190 <= pushes["acme"] <= 210, pushes
    assert 90 <= pushes["beta"] <= 110, pushes


def test_a_paced_organization_of_small_chunks_gets_its_rate_beside_a_busy_unpaced_one(
    clocked: FairQueue, clock: Clock
) -> None:
    # C's chunks carry 2 deployments (a twenty-fifth of its rate), P's 250: C needs 25 takes a second. The
    # lane here takes a chunk every 30 ms, 33 a second.
    rate = 50.0
    clocked.put("c-paced", _chunks("c", 500, size=2), rate_per_s=rate)
    clocked.put("p-busy", _chunks("p", 200, size=250))

    pushes = {"c-paced": 0, "p-busy": 0}
    for _ in range(334):  # 10 s of the lane
        taken = clocked.take(uuid.uuid4().hex)
        # Every take finds a chunk: P's are always ready when C's next slot has not come.
        assert taken.organization_id is not None
        assert taken.deployment_ids is not None
        pushes[taken.organization_id] += len(taken.deployment_ids)
        clock.now += 0.030

    # C its full rate, 500 in 10 s (counted in turns it would get one of two takes: 33 a second); P the rest.
    assert 480 <= pushes["c-paced"] <= 1.2 * rate * 10, pushes
    assert pushes["p-busy"] >= 250 * 80, pushes


def test_a_paced_organization_makes_up_lateness_slowly_never_beyond_the_bound(
    clocked: FairQueue, clock: Clock
) -> None:
    # 150 chunks of 2 at 20/s: slots 0.1 s apart, the last at 14.9 s. For the first second the lane takes
    # a chunk every 250 ms only (every thread in another organization's big chunks): C falls 0.6 s behind.
    # Then it takes whatever may go every 20 ms.
    rate, chunks = 20.0, 150
    size = paced_chunk_size(250, rate)
    clocked.put("c-paced", _chunks("c", chunks, size=size), rate_per_s=rate)
    start, taken = clock.now, list[float]()
    while len(taken) < chunks and clock.now < start + 30:
        busy = clock.now < start + 1.0
        clock.now += 0.25 if busy else 0.02
        while clocked.take(uuid.uuid4().hex).deployment_ids is not None:
            taken.append(clock.now - start)
            if busy:
                break

    # The lateness is made up, a little faster than the rate, by the last slot (lost, it would end 0.6 s
    # later); and no 1-second window sees more than the bound (23.8), under 1.2 times the rate.
    assert len(taken) == chunks
    assert taken[-1] == pytest.approx((chunks - 1) * size / rate, abs=0.05), taken[-10:]
    bound = rate * catch_up_pace(size, rate) * (1 + catch_up_s(size, rate)) + size
    busiest = max(sum(size for t in taken if at <= t < at + 1.0) for at in taken)
    assert busiest <= bound <= 1.2 * rate, (busiest, bound)


@pytest.mark.parametrize("rate", [2.0, 4.0, 4.9, 20.0])
def test_after_a_stall_no_second_sees_more_whole_pushes_than_1_2_times_the_rate(
    clocked: FairQueue, clock: Clock, rate: float
) -> None:
    # Under 10 a second a chunk is one push, a large share of the rate: catching up at 1.05 times it would
    # fit one push more into some second (3 at 2/s, 5 at 4/s, 6 at 4.9/s).
    size = paced_chunk_size(250, rate)
    chunks = int(8 * rate / size)
    clocked.put("c-paced", _chunks("c", chunks, size=size), rate_per_s=rate)
    clock.now += 3.0  # every thread busy elsewhere: the first 3 s of slots all fall due at once
    start, taken = clock.now, list[float]()
    while len(taken) < chunks and clock.now < start + 30:
        while clocked.take(uuid.uuid4().hex).deployment_ids is not None:
            taken.append(clock.now)
        clock.now += 1 / 128  # exact in binary: the stores see the moments the test counts

    assert len(taken) == chunks
    busiest = max(sum(size for t in taken if at <= t < at + 1.0) for at in taken)
    assert busiest <= max(size, math.floor(PACE_LIMIT * rate)), busiest


def test_an_organization_that_starts_waiting_gets_no_credit_for_its_idle_time(fair: FairQueue) -> None:
    fair.put("beta", _chunks("b", 1))
    assert _take_all(fair) == ["beta"]
    fair.put("acme", _chunks("a", 12))
    for _ in range(10):
        assert fair.take(uuid.uuid4().hex).organization_id == "acme"
    fair.put("beta", _chunks("c", 6))

    order = _take_all(fair)

    # beta joins at acme's place, not at the place its single chunk left it: they alternate.
    assert order[:4] == ["acme", "beta", "acme", "beta"], order


def test_a_token_delivered_again_takes_the_same_chunk_until_done(fair: FairQueue) -> None:
    fair.put("acme", _chunks("a", 3))

    first = fair.take("message-1")
    again = fair.take("message-1")
    other = fair.take("message-2")
    fair.done("message-1")
    after = fair.take("message-1")

    assert first.deployment_ids == ["a0-0", "a0-1"]
    assert again == first
    assert other.deployment_ids == ["a1-0", "a1-1"]
    assert after.deployment_ids == ["a2-0", "a2-1"]


def test_with_nothing_left_a_token_takes_nothing(fair: FairQueue) -> None:
    fair.put("acme", _chunks("a", 1))
    assert fair.take("one").deployment_ids is not None

    nothing = fair.take("two")

    assert (nothing.organization_id, nothing.deployment_ids, nothing.wait_s) == (None, None, None)


def test_a_paced_organization_is_booked_and_taken_no_faster_than_its_rate(fair: FairQueue) -> None:
    delays = fair.put("acme", _chunks("a", 5), rate_per_s=10.0)

    assert delays == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8], abs=0.05)
    assert fair.take("one").organization_id == "acme"
    wait = fair.take("two")
    assert wait.deployment_ids is None
    assert wait.wait_s is not None
    assert 0.1 < wait.wait_s <= 0.2


def test_a_paced_organization_does_not_hold_up_an_unpaced_one(fair: FairQueue) -> None:
    fair.put("slow", _chunks("s", 3), rate_per_s=1.0)
    fair.put("acme", _chunks("a", 3))

    order = _take_all(fair)

    # Level at first (the lower id goes first); then slow's next chunk is a second away, acme's are not.
    assert order == ["acme", "slow", "acme", "acme"]


def test_a_long_paced_rollout_is_booked_slot_after_slot_and_taken_in_order(fair: FairQueue) -> None:
    chunks = _chunks("a", 250)  # more than one Redis script call's worth (PUT_AT_ONCE)

    delays = fair.put("acme", chunks, rate_per_s=1_000.0)

    assert delays == pytest.approx([i * 0.002 for i in range(250)], abs=0.05)
    first = fair.take("one")
    assert first.deployment_ids == chunks[0]


def test_an_organization_that_starts_waiting_beside_a_paced_one_does_not_starve_the_others(
    clocked: FairQueue, clock: Clock
) -> None:
    # A paced organization's pass moves only at its own rate (5 takes a second here), an unpaced one's at
    # the lane's (40 takes a second, less the paced one's): after a while the paced one lags far behind.
    # An organization that starts waiting then must join level with the unpaced one, not at the paced one's
    # stale pass, where it would take every turn until it caught up.
    clocked.put("paced", _chunks("p", 200, size=1), rate_per_s=5.0)
    clocked.put("acme", _chunks("a", 1_000))
    for _ in range(800):  # 20 s of the lane, a take every 25 ms
        assert clocked.take(uuid.uuid4().hex).organization_id is not None
        clock.now += 0.025
    clocked.put("beta", _chunks("b", 200))

    order = []
    for _ in range(100):
        order.append(clocked.take(uuid.uuid4().hex).organization_id)
        clock.now += 0.025

    # The paced one keeps its 5 a second (12 or 13 in 2.5 s); acme and beta share the rest about evenly.
    assert 11 <= order.count("paced") <= 14, order
    assert 40 <= order.count("acme") <= 48, order
    assert 40 <= order.count("beta") <= 48, order


def test_ready_counts_the_chunks_free_to_go_for_the_grace_and_no_others(
    clocked: FairQueue, clock: Clock
) -> None:
    clocked.put("acme", _chunks("a", 3))
    clocked.put("paced", _chunks("p", 4, size=1), rate_per_s=1.0)  # booked a second apart
    claimed = clocked.take("one")

    assert claimed.organization_id == "acme"
    assert clocked.ready(100) == 0  # free to go, but for no time yet: their tokens are on their way
    clock.now += READY_GRACE_S
    assert clocked.ready(100) == 2 + 1  # acme's two not claimed, paced's first
    assert clocked.ready(2) == 2
    clock.now += 2.0
    assert clocked.ready(100) == 2 + 3


def test_ready_leaves_a_chunk_due_within_the_grace_to_its_own_token(clocked: FairQueue, clock: Clock) -> None:
    due = clock.now + 1.0
    clocked.put("paced", _chunks("p", 2, size=1), rate_per_s=1.0)  # booked now and a second on
    clock.now = due + 0.5 * READY_GRACE_S  # the second's slot came 0.5 s ago
    assert clocked.ready(100) == 1
    clock.now = due + 1.5 * READY_GRACE_S  # 1.5 s ago
    assert clocked.ready(100) == 2


def test_ready_leaves_a_chunk_whose_organizations_tat_came_within_the_grace_to_its_own_token(
    clocked: FairQueue, clock: Clock
) -> None:
    clocked.put("paced", _chunks("p", 2, size=1), rate_per_s=1.0)  # booked now and a second on
    clock.now += 1.5  # the first taken late: the organization's tat goes a second on from the take
    assert clocked.take("one").organization_id == "paced"
    tat = clock.now + 1.0
    clock.now = tat + 0.5 * READY_GRACE_S  # the second's slot long come, the tat 0.5 s ago
    assert clocked.ready(100) == 0
    clock.now = tat + 1.5 * READY_GRACE_S  # 1.5 s ago
    assert clocked.ready(100) == 1


def test_a_lane_takes_counts_and_forgets_its_own_chunks_alone(
    lanes: tuple[FairQueue, FairQueue], clock: Clock
) -> None:
    bulk, paced = lanes
    bulk.put("acme", _chunks("b", 2))
    paced.put("acme", _chunks("p", 3))
    paced.put("beta", _chunks("q", 1))
    clock.now += READY_GRACE_S

    assert (bulk.ready(100), paced.ready(100)) == (2, 4)
    # One message id claims a chunk in each lane: a claim is its lane's.
    first = bulk.take("message-1")
    other = paced.take("message-1")
    assert first.deployment_ids == ["b0-0", "b0-1"]
    assert other.deployment_ids == ["p0-0", "p0-1"]
    assert (bulk.ready(100), paced.ready(100)) == (1, 3)

    bulk.done("message-1")

    assert paced.take("message-1") == other  # still claimed in its lane
    assert bulk.take("message-2").deployment_ids == ["b1-0", "b1-1"]
    nothing = bulk.take("message-3")  # the paced lane's three left are no concern of the bulk lane's
    assert (nothing.organization_id, nothing.deployment_ids, nothing.wait_s) == (None, None, None)
    assert (bulk.ready(100), paced.ready(100)) == (0, 3)
    assert sorted(_take_all(paced)) == ["acme", "acme", "beta"]


def test_an_organizations_turns_and_pacing_in_one_lane_leave_the_others_alone(
    lanes: tuple[FairQueue, FairQueue], clock: Clock
) -> None:
    bulk, paced = lanes
    paced.put("beta", _chunks("q", 4))
    bulk.put("acme", _chunks("b", 10))
    assert _take_all(bulk) == ["acme"] * 10  # the bulk lane's turns far along, acme's alone

    paced.put("acme", _chunks("p", 4, size=1), rate_per_s=1.0)  # booked a second apart
    bulk.put("acme", _chunks("c", 4))  # unpaced in the bulk lane

    # In the paced lane acme joins level with beta, there all along (the lower id goes first): the bulk
    # lane's turns count for nothing here. There acme's tat moves a second on with each take; in the bulk
    # lane its chunks all go at once.
    assert [paced.take(uuid.uuid4().hex).organization_id for _ in range(2)] == ["acme", "beta"]
    assert _take_all(bulk) == ["acme"] * 4
    assert _take_all(paced) == ["beta"] * 3
    wait = paced.take(uuid.uuid4().hex)
    assert wait.deployment_ids is None
    assert wait.wait_s == pytest.approx(1.0, abs=0.05)
    clock.now += 1.0
    assert paced.take(uuid.uuid4().hex).organization_id == "acme"


def test_an_organization_waits_in_a_lane_while_a_chunk_of_it_there_is_not_yet_taken(
    lanes: tuple[FairQueue, FairQueue],
) -> None:
    bulk, paced = lanes
    bulk.put("acme", _chunks("b", 2))

    assert (bulk.waits("acme"), paced.waits("acme"), bulk.waits("beta")) == (True, False, False)
    bulk.take("message-1")
    assert bulk.waits("acme")  # one chunk left
    bulk.take("message-2")
    assert not bulk.waits("acme")  # both claimed, neither done: a claimed chunk no longer waits
    bulk.done("message-1")
    bulk.done("message-2")
    assert not bulk.waits("acme")


def test_a_database_take_that_finds_every_ready_chunk_locked_waits_a_floor_not_zero(pg: Engine) -> None:
    @contextmanager
    def session() -> Iterator[Session]:
        with Session(pg) as s, s.begin():
            yield s

    fair = DatabaseFairQueue(session)
    fair.put("acme", _chunks("a", 1))

    with pg.connect() as other, other.begin():  # another taker, mid-take, holds the chunk locked
        other.execute(sa.select(CHUNK.c.id).with_for_update()).all()
        contended = fair.take("one")

    assert contended.deployment_ids is None
    assert contended.wait_s == CONTENDED_WAIT_S
    assert fair.take("two").organization_id == "acme"  # the lock gone, the chunk goes


def test_a_redis_pass_beyond_fourteen_digits_is_kept_exact(clock: Clock) -> None:
    # Lua hands a number to Redis with 14 significant digits; a pass (a score) goes through '%d' instead.
    require(REDIS_URL, "Redis")
    client = redis.Redis.from_url(REDIS_URL)
    namespace = f"mdmq-test-{uuid.uuid4().hex[:8]}"
    try:
        fair = RedisFairQueue(client, namespace, clock)
        virtual = 2**52 + 1
        client.set(f"{namespace}:fair:virtual", virtual)
        fair.put("acme", _chunks("a", 2, size=3))
        fair.take("one")

        assert client.zscore(f"{namespace}:fair:orgs", "acme") == virtual + advance(3, 1)
    finally:
        for key in client.scan_iter(f"{namespace}:*"):
            client.delete(key)
        client.close()
