"""The fair queues on the database (`workers.fair.database`), one per lane: chunks per organization, taken in
turns by the lowest position, paced by each organization's theoretical arrival time. Every function works in
the one lane it is given (`workers.fair.FairLaneName`'s value) and never reads or moves another's rows. Times
are seconds since the epoch, given by the caller."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel

from models.store._sql import dialect_of, run

CHUNK = SQLModel.metadata.tables["fair_chunk"]
TURN = SQLModel.metadata.tables["fair_organization"]
# Takers that lose a paced organization's slot to another look again, past it, this many times at most.
_LOOKS = 8
# The wait a take answers when chunks may go now but other takers hold them all locked (or won their
# slots): without a floor it would be ~0, and the token, sent again after a millisecond, would spin on the
# database for as long as the contention lasts. 50 ms is a fraction of a chunk's dispatch.
CONTENDED_WAIT_S = 0.05

# From the end of an organization's bookings: each chunk's booked time, and the new end.
Booking = Callable[[float], tuple[list[float], float]]
# (tat, now, chunk size, rate) → the organization's tat once the chunk is taken.
Pacing = Callable[[float, float, int, float], float]
# (its own position, the virtual time, the lowest position waiting) → where an organization that starts
# waiting joins.
Joining = Callable[[int, int, int], int]
# (chunk size, weight) → how far a take moves its organization's position on.
Advancing = Callable[[int, int], int]


@dataclass(frozen=True)
class FairTake:
    """A chunk taken (`organization_id`, `deployment_ids`), or the seconds until one may be (`wait_s`), or
    nothing waiting at all."""

    organization_id: str | None = None
    deployment_ids: list[str] | None = None
    wait_s: float | None = None


def put_chunks(
    session: Session,
    *,
    lane: str,
    organization_id: str,
    chunks: Sequence[Sequence[str]],
    weight: int,
    rate_per_s: float | None,
    book: Booking,
    join: Joining,
) -> list[float]:
    """Add `chunks` after the organization's waiting ones in `lane`, booked by `book`; their booked times. An
    organization that had none waiting there joins where `join` says, from its own position, the lane's
    virtual time (`_virtual`) and the lowest position of those waiting in it."""
    insert = postgresql.insert if dialect_of(session) == "postgresql" else sqlite.insert
    new = {
        "lane": lane,
        "organization_id": organization_id,
        "weight": weight,
        "position": 0,
        "served": 0,
        "booked_s": 0.0,
        "tat_s": 0.0,
    }
    run(session, insert(TURN).values(new).on_conflict_do_nothing())
    mine = sa.and_(TURN.c.lane == lane, TURN.c.organization_id == organization_id)
    row = run(session, sa.select(TURN.c.position, TURN.c.booked_s).where(mine).with_for_update()).one()
    times, booked = book(row.booked_s)
    values: dict[str, object] = {"weight": weight, "rate_per_s": rate_per_s, "booked_s": booked}
    if not organization_waits(session, lane=lane, organization_id=organization_id):
        waiting = sa.and_(TURN.c.lane == lane, _waiting())
        lowest = run(session, sa.select(sa.func.min(TURN.c.position)).where(waiting)).scalar()
        virtual = _virtual(session, lane=lane)
        values["position"] = join(row.position, virtual, row.position if lowest is None else lowest)
    run(session, sa.update(TURN).where(mine).values(values))
    rows = [
        {"lane": lane, "organization_id": organization_id, "deployment_ids": list(c), "ready_at_s": at}
        for c, at in zip(chunks, times, strict=True)
    ]
    if rows:
        run(session, sa.insert(CHUNK), rows)
    return times


def take_chunk(
    session: Session, *, lane: str, claim: str, now_s: float, advance: Advancing, pace: Pacing
) -> FairTake:
    """The chunk `claim` holds already in `lane`; else the lane's next that may go now, of the organization
    with the lowest position (moved on by `advance` of the chunk's size and its weight, and its tat by
    `pace`), claimed. Chunks other takers hold locked are passed over."""
    c = CHUNK.c
    mine = sa.and_(c.lane == lane, c.claim == claim)
    held = run(session, sa.select(c.organization_id, c.deployment_ids).where(mine)).first()
    if held is not None:
        return FairTake(held.organization_id, list(held.deployment_ids))
    passed: set[str] = set()
    for _ in range(_LOOKS):
        found = _next_chunk(session, lane=lane, now_s=now_s, passed=passed)
        if found is None:
            break
        if not _advance(session, found, lane=lane, now_s=now_s, advance=advance, pace=pace):
            passed.add(found.organization_id)
            continue
        claimed = {"claim": claim, "claimed_at_s": now_s}
        run(session, sa.update(CHUNK).where(CHUNK.c.id == found.id).values(claimed))
        return FairTake(found.organization_id, list(found.deployment_ids))
    return _wait(session, lane=lane, now_s=now_s)


def forget_claim(session: Session, *, lane: str, claim: str, stale_before_s: float) -> None:
    """Delete the chunk of `claim` in `lane` (dispatched), and the lane's chunks claimed before
    `stale_before_s` and never done. Stale claims too are the lane's own, as in the other stores: a
    lane's `done` never waits on the other lane's rows."""
    c = CHUNK.c
    run(session, sa.delete(CHUNK).where(c.lane == lane, c.claim == claim))
    stale = sa.and_(c.lane == lane, c.claim.is_not(None), c.claimed_at_s < stale_before_s)
    run(session, sa.delete(CHUNK).where(stale))


def _turn_of_chunk() -> sa.ColumnElement[bool]:
    """A chunk's organization's row: the same organization, in the same lane."""
    return sa.and_(TURN.c.lane == CHUNK.c.lane, TURN.c.organization_id == CHUNK.c.organization_id)


def _next_chunk(
    session: Session, *, lane: str, now_s: float, passed: set[str]
) -> sa.Row[tuple[object, ...]] | None:
    c, o = CHUNK.c, TURN.c
    statement = (
        sa.select(c.id, c.organization_id, c.deployment_ids, o.rate_per_s, o.weight)
        .join(TURN, _turn_of_chunk())
        .where(c.lane == lane, c.claim.is_(None), c.ready_at_s <= now_s, o.tat_s <= now_s)
        .order_by(o.position, o.organization_id, c.ready_at_s, c.id)
        .limit(1)
        .with_for_update(of=CHUNK, skip_locked=True)
    )
    if passed:
        statement = statement.where(c.organization_id.not_in(sorted(passed)))
    return run(session, statement).first()


def _advance(
    session: Session,
    found: sa.Row[tuple[object, ...]],
    *,
    lane: str,
    now_s: float,
    advance: Advancing,
    pace: Pacing,
) -> bool:
    """Move the chunk's organization on past the chunk, its turns and its pacing, noting the position it was
    served at; False when another taker took its paced slot first (its row, locked until that taker
    commits, is read again after)."""
    o = TURN.c
    where = sa.and_(o.lane == lane, o.organization_id == found.organization_id)
    step = advance(len(found.deployment_ids), int(found.weight))
    # Both from the row as it was: `served` the position before this take, whoever took last.
    values: dict[str, object] = {"position": o.position + step, "served": o.position}
    rate = found.rate_per_s
    if rate:
        locked = sa.select(o.tat_s).where(where, o.tat_s <= now_s).with_for_update()
        tat = run(session, locked).scalar()
        if tat is None:
            return False
        values["tat_s"] = pace(tat, now_s, len(found.deployment_ids), rate)
    run(session, sa.update(TURN).where(where).values(values))
    return True


def _virtual(session: Session, *, lane: str) -> int:
    """The highest position a take in `lane` has served, before moving it on: each organization's row keeps
    the one its last take served. Read from the rows, not kept in one of its own, so that takes never queue
    for the lock of a single row."""
    highest = sa.select(sa.func.max(TURN.c.served)).where(TURN.c.lane == lane)
    return int(run(session, highest).scalar() or 0)


def ready_count(session: Session, *, lane: str, since_s: float, limit: int) -> int:
    """How many chunks of `lane` could have been taken at `since_s` already (booked by then, their
    organization's tat come by then) and are claimed by none, counted up to `limit`."""
    c, o = CHUNK.c, TURN.c
    ready = (
        sa.select(c.id)
        .join(TURN, _turn_of_chunk())
        .where(c.lane == lane, c.claim.is_(None), c.ready_at_s <= since_s, o.tat_s <= since_s)
        .limit(limit)
        .subquery()
    )
    return int(run(session, sa.select(sa.func.count()).select_from(ready)).scalar() or 0)


def organization_waits(session: Session, *, lane: str, organization_id: str) -> bool:
    """Whether the organization has a chunk in `lane` claimed by none."""
    c = CHUNK.c
    statement = sa.select(c.id).where(c.lane == lane, c.organization_id == organization_id, c.claim.is_(None))
    return run(session, statement.limit(1)).first() is not None


def _waiting() -> sa.ColumnElement[bool]:
    """An organization's row with a chunk waiting in its lane."""
    return sa.exists().where(_turn_of_chunk(), CHUNK.c.claim.is_(None))


def _wait(session: Session, *, lane: str, now_s: float) -> FairTake:
    c, o = CHUNK.c, TURN.c
    statement = (
        sa.select(o.tat_s, sa.func.min(c.ready_at_s).label("ready"))
        .join(TURN, _turn_of_chunk())
        .where(c.lane == lane, c.claim.is_(None))
        .group_by(o.organization_id, o.tat_s)
    )
    times = [max(row.tat_s, row.ready) for row in run(session, statement)]
    if not times:
        return FairTake()
    return FairTake(wait_s=max(CONTENDED_WAIT_S, min(times) - now_s))
