"""The fair queue in one process's memory, for the in-process broker (the embedded default, the demo)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from workers.fair import CLAIM_TTL_S, READY_GRACE_S, Taken, advance, book, joining_pass, next_tat


@dataclass
class _Organization:
    chunks: deque[tuple[float, list[str]]] = field(default_factory=deque)  # (booked at, ids), in order
    weight: int = 1
    rate_per_s: float | None = None
    booked: float = 0.0  # the end of its bookings (`book`)
    tat: float = 0.0  # when its next chunk may be taken, paced
    pass_: int = 0


class MemoryFairQueue:
    """`workers.fair.FairQueue` behind one lock. `clock`: seconds, `time.time` unless a test gives one."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._organizations: dict[str, _Organization] = {}
        self._claims: dict[str, tuple[float, str, list[str]]] = {}  # claim → (at, organization, ids)
        self._virtual = 0  # the highest pass served (`workers.fair.joining_pass`)

    def put(
        self,
        organization_id: str,
        chunks: Sequence[Sequence[str]],
        *,
        weight: int = 1,
        rate_per_s: float | None = None,
    ) -> list[float]:
        with self._lock:
            now = self._clock()
            organization = self._organizations.setdefault(organization_id, _Organization())
            if not organization.chunks:
                organization.pass_ = joining_pass(
                    organization.pass_, self._virtual, min(self._waiting_passes(), default=0)
                )
            organization.weight, organization.rate_per_s = weight, rate_per_s
            times, organization.booked = book(
                now, organization.booked, sizes=[len(c) for c in chunks], rate_per_s=rate_per_s
            )
            organization.chunks.extend((at, list(c)) for at, c in zip(times, chunks, strict=True))
            return [at - now for at in times]

    def take(self, claim: str) -> Taken:
        with self._lock:
            now = self._clock()
            if (held := self._claims.get(claim)) is not None:
                return Taken(held[1], held[2])
            self._forget_stale(now)
            waiting = sorted(
                (o.pass_, organization_id, o)
                for organization_id, o in self._organizations.items()
                if o.chunks
            )
            earliest: float | None = None
            for _, organization_id, organization in waiting:
                at = max(organization.chunks[0][0], organization.tat)
                if at <= now:
                    ids = self._take_from(organization, now)
                    self._claims[claim] = (now, organization_id, ids)
                    return Taken(organization_id, ids)
                earliest = at if earliest is None else min(earliest, at)
            return Taken(wait_s=earliest - now) if earliest is not None else Taken()

    def done(self, claim: str) -> None:
        with self._lock:
            self._claims.pop(claim, None)

    def ready(self, limit: int) -> int:
        with self._lock:
            since, ready = self._clock() - READY_GRACE_S, 0
            for organization in self._organizations.values():
                if organization.tat > since:
                    continue
                for at, _ in organization.chunks:  # in booked order
                    if at > since or ready >= limit:
                        break
                    ready += 1
            return min(ready, limit)

    def waits(self, organization_id: str) -> bool:
        with self._lock:
            organization = self._organizations.get(organization_id)
            return organization is not None and bool(organization.chunks)

    def _take_from(self, organization: _Organization, now: float) -> list[str]:
        _, ids = organization.chunks.popleft()
        self._virtual = max(self._virtual, organization.pass_)
        organization.pass_ += advance(len(ids), organization.weight)
        if organization.rate_per_s:
            organization.tat = next_tat(organization.tat, now, len(ids), organization.rate_per_s)
        return ids

    def _waiting_passes(self) -> list[int]:
        return [o.pass_ for o in self._organizations.values() if o.chunks]

    def _forget_stale(self, now: float) -> None:
        stale = [c for c, (at, _, _) in self._claims.items() if at < now - CLAIM_TTL_S]
        for claim in stale:
            del self._claims[claim]
