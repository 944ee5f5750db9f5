"""The leader lease: one row per lease name, taken and renewed with one conditional upsert.

Several schedulers may run; the one whose name is in the row, until `expires_at`, runs the jobs. Everyone
asks every third of the lease period; the row is written to expire two thirds of a period after each ask.
So the leader has two chances to renew before its row expires, and a standby takes over within one period
of the leader's death, SIGKILL included: the last renewal was at most a third of a period before the death,
the row expires two thirds after it, and the standby asks again within a third.

A leader stops at once when it learns it lost the row, and on its own when it could not renew in time: it
counts its lease on the monotonic clock from the moment it asked, minus a safety margin (a sixth of the
period), so that a leader whose renewals stall (a database outage, a paused process) gives up before any
standby can take over. Host clocks are assumed NTP-synchronised to within that margin.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from datetime import datetime, timedelta

from models.database import DATABASE_ERRORS, Session
from models.store.lease import holds_lease, lease_row, release_lease, take_lease
from models.types import utcnow

log = logging.getLogger(__name__)

# Whether this process still leads: the runner sets it for each job run, and a job asks before every page
# (or provider call), so that a leader that lost its lease mid-run stops there. Outside the runner (tests,
# benchmarks): always.
STILL_LEADING: ContextVar[Callable[[], bool]] = ContextVar("still_leading", default=lambda: True)


def still_leading() -> bool:
    return STILL_LEADING.get()()


def holder_name() -> str:
    """This process, recognisable in the row: host, pid and a random suffix (pids repeat across restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Lease:
    def __init__(
        self,
        session: Callable[[], AbstractContextManager[Session]],
        *,
        name: str = "scheduler",
        holder: str | None = None,
        period_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if period_s <= 0:
            raise ValueError("period_s must be > 0")
        self.session = session
        self.name = name
        self.holder = holder or holder_name()
        self.period_s = period_s
        self.ttl_s = period_s * 2 / 3  # how long the row is valid after each ask
        self.margin_s = period_s / 6  # this much clock skew between hosts is tolerated
        self._clock = clock
        self._valid_until = 0.0  # monotonic; 0: not leading

    @property
    def renew_every_s(self) -> float:
        return self.period_s / 3

    def leading(self) -> bool:
        """True while this process holds the lease by its own clock's count."""
        return self._clock() < self._valid_until

    def refresh(self) -> bool:
        """Take or renew the lease; returns whether this process leads now. A database error counts as not
        renewed (the lease then runs out on its own); it is logged, not raised."""
        asked_at = self._clock()
        was_leading = self.leading()
        try:
            with self.session() as s:
                now = utcnow()
                expires_at = now + timedelta(seconds=self.ttl_s)
                won = take_lease(s, name=self.name, holder=self.holder, now=now, expires_at=expires_at)
        except DATABASE_ERRORS as e:
            log.warning("scheduler lease %r not renewed: %s", self.name, type(e).__name__)
            return self.leading()
        if won:
            self._valid_until = asked_at + self.ttl_s - self.margin_s
            if not was_leading:
                log.info("scheduler lease %r taken by %s", self.name, self.holder)
        else:
            if was_leading:
                log.warning(
                    "scheduler lease %r lost by %s: another scheduler holds it", self.name, self.holder
                )
            self._valid_until = 0.0
        return won

    def stand_down(self) -> None:
        """Stop leading now, by this process's own count; the row stays until `release`."""
        self._valid_until = 0.0

    def release(self) -> None:
        """Give the lease up on a clean shutdown, so that a standby takes over at its next try."""
        self._valid_until = 0.0
        try:
            with self.session() as s:
                release_lease(s, name=self.name, holder=self.holder, now=utcnow())
        except DATABASE_ERRORS as e:
            log.warning("scheduler lease %r not released: %s", self.name, type(e).__name__)

    def leader(self) -> tuple[str, datetime] | None:
        """Who the row names and until when (None before anyone took it); a database error is logged and
        answers None."""
        try:
            with self.session() as s:
                return lease_row(s, name=self.name)
        except DATABASE_ERRORS as e:
            log.warning("scheduler lease %r not read: %s", self.name, type(e).__name__)
            return None

    def confirm(self, session: Session, now: datetime) -> bool:
        """In the caller's transaction: does the row still name this process, unexpired? A job checks this
        before it records its run, so that a leader that was paused past its lease never runs one."""
        return holds_lease(session, name=self.name, holder=self.holder, now=now)
