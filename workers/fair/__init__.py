"""The bulk lane's fair queue (DESIGN §4.7): chunks of deployments kept per organization, taken in weighted
turns across every worker process, each organization's wake-ups paced to its rate.

A dispatch message on the bulk queue carries no deployment: it is a *token*, and the worker that takes one
takes the next chunk from here. Tokens are interchangeable, so a message's place on the broker's FIFO queue
no longer decides whose devices are woken next: this queue does, at the moment a worker is free.

- **Turns** (stride scheduling, a smooth weighted round-robin, counted in pushes): each organization with
  chunks waiting has a *pass*; a take serves the organization of the lowest pass whose next chunk may go
  now, and advances its pass by the chunk's size times `STRIDE`, divided by its weight (`advance`). Over any
  stretch, organizations waiting together get *deployments* (not chunks) in the ratio of their weights,
  whatever their chunks' sizes: a paced organization's small chunks cost it little pass each, so while it
  keeps under its share it wins every slot that falls due and gets its full rate beside a busy unpaced one
  (counted in turns, its many small takes would overtake the unpaced one's few big ones, and it would get
  a turn only after each of theirs). One that starts waiting joins at the *virtual time*, the highest pass
  served so far (or at its own pass, or at the lowest of those waiting, when higher: `joining_pass`), so it
  is served at once but gains no credit for the time it was idle. Not at the lowest pass waiting alone: a
  paced organization's pass moves only at its own slow rate and lags far behind, and a newcomer joining
  there would take every turn until it caught up, starving an unpaced organization that has waited all
  along.
- **Pacing** (GCRA): an organization with a wake-up rate has its chunks cut to a tenth of the rate at most
  (`paced_chunk_size`), and `put` books each chunk's slot one after the other at the rate (`book`), so that
  its token is sent delayed to about when it may go, never to wake a thread that would sleep. A chunk may
  be taken once its slot has come and the organization's *theoretical arrival time* (tat) too; taking a
  chunk of `n` moves the tat on by `n / (rate * catch_up_pace(n))` from itself, or from `now - catch_up_s(n)`
  when the take came late (a delayed message is due to within a worker poll, not to the millisecond). The
  slots keep the schedule, the tat bounds the bursts: an organization whose takes came late (all threads
  busy with another's big chunks) is behind its slots, and makes the lateness up at up to `CATCH_UP_PACE`
  times its rate until it is back on them, instead of losing it; on its slots, it goes at its rate. The
  pace is capped so that no one-second window holds more than `PACE_LIMIT` times the rate (the issue's
  "at most 1.2 times the rate in any 1-second window"), as far as whole pushes allow: below 1/1.2 a
  second, a window holds one. The whole goes in about `total / rate`.
- **Holds**: a held organization takes no share of the pushing. Its chunks stay in turn, and the first
  taken after the hold holds every Queued deployment of the organization for that provider at once
  (`services.dispatch.hold`); each later chunk of it then claims nothing (`claim_for_push` passes held
  deployments over) and its turn costs one statement, no push. Skipping held organizations here instead
  would need the queue to know holds, which live per provider in the database, and a release re-enqueues
  the held deployments through the same enqueue anyway.
- **Redelivery**: a take is keyed by the token's message id. A token delivered again (its worker died, or
  Dramatiq retries it) takes the same chunk again; `done` forgets the claim once the dispatch returned.
  Claims never finished (a message that ran out of retries) are forgotten after `CLAIM_TTL_S`: the
  deployments are marked enqueued, and the re-push sweep takes them at their redelivery time.

Implementations: `memory` (the in-process broker), `redis` (Lua scripts, atomic, beside the Redis broker's
queues), `database` (rows in PostgreSQL, for the RabbitMQ broker).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# A take of `n` deployments advances the organization's pass by `n * STRIDE // weight` (`advance`). 2,520,
# the least common multiple of 1..10, divides exactly by the small weights and leaves any weight up to 100 a
# rounding under 1 a take: 0.02% of a 250-deployment chunk's advance, 4% of a single deployment's. It is
# kept small because passes only grow and Redis keeps them as doubles (sorted-set scores), exact to 2**53:
# at weight 1 that is 3.5e12 deployments, over a year of 100,000 pushes a second to one organization without
# a pause (organizations waiting together move the virtual time slower). PostgreSQL's BIGINT lasts 1,000
# times longer.
STRIDE = 2_520
MAX_WEIGHT = 100
# The most pushes any 1-second window may see, in times the rate: the limit the issue that asked for pacing
# set ("no burst beyond the rate: in any 1-second window at most 1.2 times the rate goes out").
PACE_LIMIT = 1.2
# The burst a 1-second window may see beyond the rate, in seconds of it, less what catching up adds: one
# chunk, and the lateness one take may make up at once (`catch_up_s`). At a chunk of a tenth of the rate,
# 0.14 and `CATCH_UP_PACE` give 1.05 * 1.04 + 0.1 = 1.192 times the rate at most.
PACE_BURST_S = 0.14
# How fast, in times its rate, an organization behind its booked slots catches up at most
# (`catch_up_pace`): lateness beyond `catch_up_s` is made up at 5% of the rate, not lost. Measured beside a
# busy unpaced rollout (C at 34-38/s while it ran, 10-20% of its pushes late): the whole a few seconds
# sooner, the busiest second the same.
CATCH_UP_PACE = 1.05
# The largest share of an organization's rate one chunk carries: the rest of the burst (0.04 s) for
# catching up when a worker comes late. Measured against a twentieth beside a busy unpaced rollout: the
# same pace, with 2.5 times fewer dispatches and the busiest second nearer 1.2 times the rate than 1.3
# (more catching up gave more bursts than pace).
PACED_CHUNK_SHARE = 0.1
# A claim whose dispatch never said it was done (its message failed for good) is forgotten after this
# long: longer than a dispatch's retries and time limit (workers.actors.DISPATCH_OPTIONS) together.
CLAIM_TTL_S = 3600.0
# How long a chunk must have been free to take, and not taken, before `ready` counts it as having lost its
# token. A chunk's own token is sent delayed to its slot and arrives within a worker's poll after it (250 ms
# by default, Dramatiq's 1,000 ms): counted sooner, a paced chunk whose token is just due would get a
# second one, and that token, finding only later chunks, would send itself again delayed until its lane
# empties, a take per slot for nothing.
READY_GRACE_S = 1.0


class FairLaneName(enum.StrEnum):
    """Which fair queue a chunk is put in, fixed at its put (`workers.enqueue.FairLanes.lane_of`): `paced`
    for an organization paced at up to `Settings.paced_lane_max_rate` when it was put, none of its chunks
    waiting in the bulk lane (its tokens are served by the urgent lane's process, so that its sends keep to
    its slots), `bulk` for the rest. Each lane is a fair queue of its own: a take of one never sees the
    other's chunks."""

    bulk = "bulk"
    paced = "paced"


@dataclass(frozen=True)
class Taken:
    """What a token took: a chunk of an organization; or, when none may go now, how long until one may
    (`wait_s`), or nothing left at all (every field None)."""

    organization_id: str | None = None
    deployment_ids: list[str] | None = None
    wait_s: float | None = None


class FairQueue(Protocol):
    """The interface every implementation keeps. Methods raise their store's errors untranslated:
    redis-py's (a broker error, `workers.broker.BROKER_ERRORS`) or the database's."""

    def put(
        self,
        organization_id: str,
        chunks: Sequence[Sequence[str]],
        *,
        weight: int = 1,
        rate_per_s: float | None = None,
    ) -> list[float]:
        """Add an organization's chunks after those it has waiting; the seconds from now each is booked to
        go at (0 unpaced): its token's delay."""
        ...

    def take(self, claim: str) -> Taken:
        """The chunk claimed by `claim` already, else the next chunk in turn that may go now, claimed."""
        ...

    def done(self, claim: str) -> None:
        """Forget `claim`: its chunk was dispatched."""
        ...

    def ready(self, limit: int) -> int:
        """How many chunks could have been taken for `READY_GRACE_S` at least and were not (booked, and
        their organization's tat come, that long ago), counted up to `limit`: the tokens the scheduler's
        `fair_tokens` job sends, should some chunk have lost its own. A chunk free for less is left to the
        token on its way to it."""
        ...

    def waits(self, organization_id: str) -> bool:
        """Whether the organization has a chunk here not yet taken (a claimed one does not count). The
        enqueue asks the bulk lane's, to keep an organization paced anew in the bulk lane while its earlier
        chunks still wait there, so that it is not booked in both lanes at once."""
        ...


def paced_chunk_size(chunk_size: int, rate_per_s: float | None) -> int:
    """The most deployments one chunk of an organization paced at `rate_per_s` carries."""
    if not rate_per_s:
        return chunk_size
    return max(1, min(chunk_size, math.floor(PACED_CHUNK_SHARE * rate_per_s)))


def catch_up_s(size: int, rate_per_s: float) -> float:
    """How far behind `now` a take of `size` may start the next slot: the burst less the chunk."""
    return max(0.0, PACE_BURST_S - size / rate_per_s)


def catch_up_pace(size: int, rate_per_s: float) -> float:
    """How fast, in times the rate, an organization behind its slots takes chunks of `size`: `CATCH_UP_PACE`,
    less where a chunk is a large share of the rate (a single push under 10 a second), so that a 1-second
    window holds no more whole chunks than `PACE_LIMIT` times the rate (and never less than the rate).

    Takes at least `size / (rate * pace)` apart, with `catch_up_s` made up once, fit `k` into a window
    while `(k - 1) * size / (rate * pace) < 1 + catch_up_s`: at most `fit` of them, with `fit` whole chunks
    within the limit, needs `pace <= fit * size / (rate * (1 + catch_up_s))`."""
    fit = math.floor(PACE_LIMIT * rate_per_s / size)
    most = fit * size / (rate_per_s * (1 + catch_up_s(size, rate_per_s)))
    return max(1.0, min(CATCH_UP_PACE, most))


def next_tat(tat: float, now: float, size: int, rate_per_s: float) -> float:
    """An organization's tat after a chunk of `size` is taken `now` (when `tat <= now`): on its slots (the
    chunk's booking) these keep it to its rate; behind them, this keeps it to `catch_up_pace` times it."""
    pace = catch_up_pace(size, rate_per_s)
    return max(tat, now - catch_up_s(size, rate_per_s)) + size / (rate_per_s * pace)


def advance(size: int, weight: int) -> int:
    """How far a take of `size` deployments moves an organization of `weight` along: a weight of 2 goes
    twice as far in deployments as 1, in chunks of any size."""
    return size * STRIDE // max(1, min(weight, MAX_WEIGHT))


def joining_pass(own: int, virtual: int, lowest_waiting: int) -> int:
    """The pass an organization that starts waiting joins at: the virtual time (the highest pass a take
    has served, before moving it on), so that it starts level with those served lately; never below its
    own pass (a chunk put, taken and put again must not win a turn twice), nor below every pass waiting."""
    return max(own, virtual, lowest_waiting)


def book(
    now: float, booked: float, *, sizes: Sequence[int], rate_per_s: float | None
) -> tuple[list[float], float]:
    """The times chunks of `sizes` are booked to go at from `now`, after the organization's bookings up to
    `booked`, and its bookings after them. Unpaced: all now."""
    if not rate_per_s:
        return [now] * len(sizes), booked
    times = []
    for n in sizes:
        at = max(now, booked)
        times.append(at)
        booked = at + n / rate_per_s
    return times, booked
