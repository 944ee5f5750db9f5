"""The bulk lane's fair queue on the database (`workers.fair.database`): chunks per organization, taken in
turns by the lowest position, paced by each organization's theoretical arrival time. Times are seconds since
the epoch, given by the caller."""

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
    organization_id: str,
    chunks: Sequence[Sequence[str]],
    weight: int,
    rate_per_s: float | None,
    book: Booking,
    join: Joining,
) -> list[float]:
    """Add `chunks` after the organization's waiting ones, booked by `book`; their booked times. An
    organization that had none waiting joins where `join` says, from its own position, the virtual time
    (`_virtual`) and the lowest position of those waiting."""
    insert = postgresql.insert if dialect_of(session) == "postgresql" else sqlite.insert
    new = {
        "organization_id": organization_id,
        "weight": weight,
        "position": 0,
        "served": 0,
        "booked_s": 0.0,
        "tat_s": 0.0,
    }
    run(session, insert(TURN).values(new).on_conflict_do_nothing())
    mine = TURN.c.organization_id == organization_id
    row = run(session, sa.select(TURN.c.position, TURN.c.booked_s).where(mine).with_for_update()).one()
    times, booked = book(row.booked_s)
    values: dict[str, object] = {"weight": weight, "rate_per_s": rate_per_s, "booked_s": booked}
    if not _waits(session, organization_id):
        lowest = run(session, sa.select(sa.func.min(TURN.c.position)).where(_waiting())).scalar()
        virtual = _virtual(session)
        values["position"] = join(row.position, virtual, row.position if lowest is None else lowest)
    run(session, sa.update(TURN).where(mine).values(values))
    rows = [
        {"organization_id": organization_id, "deployment_ids": list(c), "ready_at_s": at}
        for c, at in zip(chunks, times, strict=True)
    ]
    if rows:
        run(session, sa.insert(CHUNK), rows)
    return times


def take_chunk(session: Session, *, claim: str, now_s: float, advance: Advancing, pace: Pacing) -> FairTake:
    """The chunk `claim` holds already; else the next that may go now, of the organization with the lowest
    position (moved on by `advance` of the chunk's size and its weight, and its tat by `pace`), claimed.
    Chunks other takers hold locked are passed over."""
    held = run(
        session, sa.select(CHUNK.c.organization_id, CHUNK.c.deployment_ids).where(CHUNK.c.claim == claim)
    ).first()
    if held is not None:
        return FairTake(held.organization_id, list(held.deployment_ids))
    passed: set[str] = set()
    for _ in range(_LOOKS):
        found = _next_chunk(session, now_s=now_s, passed=passed)
        if found is None:
            break
        if not _advance(session, found, now_s=now_s, advance=advance, pace=pace):
            passed.add(found.organization_id)
            continue
        claimed = {"claim": claim, "claimed_at_s": now_s}
        run(session, sa.update(CHUNK).where(CHUNK.c.id == found.id).values(claimed))
        return FairTake(found.organization_id, list(found.deployment_ids))
    return _wait(session, now_s=now_s)


def forget_claim(session: Session, *, claim: str, stale_before_s: float) -> None:
    """Delete the chunk of `claim` (dispatched), and those claimed before `stale_before_s` and never done."""
    run(session, sa.delete(CHUNK).where(CHUNK.c.claim == claim))
    stale = sa.and_(CHUNK.c.claim.is_not(None), CHUNK.c.claimed_at_s < stale_before_s)
    run(session, sa.delete(CHUNK).where(stale))


def _next_chunk(session: Session, *, now_s: float, passed: set[str]) -> sa.Row[tuple[object, ...]] | None:
    c, o = CHUNK.c, TURN.c
    statement = (
        sa.select(c.id, c.organization_id, c.deployment_ids, o.rate_per_s, o.weight)
        .join(TURN, o.organization_id == c.organization_id)
        .where(c.claim.is_(None), c.ready_at_s <= now_s, o.tat_s <= now_s)
        .order_by(o.position, o.organization_id, c.ready_at_s, c.id)
        .limit(1)
        .with_for_update(of=CHUNK, skip_locked=True)
    )
    if passed:
        statement = statement.where(c.organization_id.not_in(sorted(passed)))
    return run(session, statement).first()


def _advance(
    session: Session, found: sa.Row[tuple[object, ...]], *, now_s: float, advance: Advancing, pace: Pacing
) -> bool:
    """Move the chunk's organization on past the chunk, its turns and its pacing, noting the position it was
    served at; False when another taker took its paced slot first (its row, locked until that taker
    commits, is read again after)."""
    o = TURN.c
    where = o.organization_id == found.organization_id
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


def _virtual(session: Session) -> int:
    """The highest position a take has served, before moving it on: each organization's row keeps the one
    its last take served. Read from the rows, not kept in one of its own, so that takes never queue for the
    lock of a single row."""
    return int(run(session, sa.select(sa.func.max(TURN.c.served))).scalar() or 0)


def ready_count(session: Session, *, now_s: float, limit: int) -> int:
    """How many chunks may be taken at `now_s` (booked by then, their organization's tat come) and are
    claimed by none, counted up to `limit`."""
    c, o = CHUNK.c, TURN.c
    ready = (
        sa.select(c.id)
        .join(TURN, o.organization_id == c.organization_id)
        .where(c.claim.is_(None), c.ready_at_s <= now_s, o.tat_s <= now_s)
        .limit(limit)
        .subquery()
    )
    return int(run(session, sa.select(sa.func.count()).select_from(ready)).scalar() or 0)


def _waits(session: Session, organization_id: str) -> bool:
    statement = sa.select(CHUNK.c.id).where(
        CHUNK.c.organization_id == organization_id, CHUNK.c.claim.is_(None)
    )
    return run(session, statement.limit(1)).first() is not None


def _waiting() -> sa.ColumnElement[bool]:
    """An organization with a chunk waiting."""
    c = CHUNK.c
    return sa.exists().where(c.organization_id == TURN.c.organization_id, c.claim.is_(None))


def _wait(session: Session, *, now_s: float) -> FairTake:
    c, o = CHUNK.c, TURN.c
    statement = (
        sa.select(o.tat_s, sa.func.min(c.ready_at_s).label("ready"))
        .join(TURN, o.organization_id == c.organization_id)
        .where(c.claim.is_(None))
        .group_by(o.organization_id, o.tat_s)
    )
    times = [max(row.tat_s, row.ready) for row in run(session, statement)]
    if not times:
        return FairTake()
    return FairTake(wait_s=max(CONTENDED_WAIT_S, min(times) - now_s))
