"""The fair queue on the database, for the RabbitMQ broker (which has no shared state of its own to keep
it in): rows in `fair_chunk` and `fair_organization`, each row of one lane, each step one short
transaction."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial

from models.database import Session
from models.store.fair import forget_claim, organization_waits, put_chunks, ready_count, take_chunk
from workers.fair import (
    CLAIM_TTL_S,
    READY_GRACE_S,
    FairLaneName,
    Taken,
    advance,
    book,
    joining_pass,
    next_tat,
)


class DatabaseFairQueue:
    """`workers.fair.FairQueue` in the database of `session`, for `lane`: the rows of that lane alone.
    `clock`: seconds since the epoch; the hosts' clocks are assumed in step (NTP), as for every other time
    mdmq writes."""

    def __init__(
        self,
        session: Callable[[], AbstractContextManager[Session]],
        clock: Callable[[], float] = time.time,
        *,
        lane: FairLaneName = FairLaneName.bulk,
    ) -> None:
        self._session = session
        self._clock = clock
        self._lane = lane.value

    def put(
        self,
        organization_id: str,
        chunks: Sequence[Sequence[str]],
        *,
        weight: int = 1,
        rate_per_s: float | None = None,
    ) -> list[float]:
        if not chunks:
            return []
        now = self._clock()
        sizes = [len(c) for c in chunks]
        with self._session() as s:
            times = put_chunks(
                s,
                lane=self._lane,
                organization_id=organization_id,
                chunks=chunks,
                weight=weight,
                rate_per_s=rate_per_s,
                book=partial(book, now, sizes=sizes, rate_per_s=rate_per_s),
                join=joining_pass,
            )
        return [at - now for at in times]

    def take(self, claim: str) -> Taken:
        with self._session() as s:
            now = self._clock()
            taken = take_chunk(s, lane=self._lane, claim=claim, now_s=now, advance=advance, pace=next_tat)
        return Taken(taken.organization_id, taken.deployment_ids, taken.wait_s)

    def done(self, claim: str) -> None:
        with self._session() as s:
            forget_claim(s, lane=self._lane, claim=claim, stale_before_s=self._clock() - CLAIM_TTL_S)

    def ready(self, limit: int) -> int:
        with self._session() as s:
            return ready_count(s, lane=self._lane, since_s=self._clock() - READY_GRACE_S, limit=limit)

    def waits(self, organization_id: str) -> bool:
        with self._session() as s:
            return organization_waits(s, lane=self._lane, organization_id=organization_id)
