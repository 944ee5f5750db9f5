"""Queue wait: how long each deployment waited from its create to its first push attempt, per organization.

The `organization` label names at most `NAMED_ORGANIZATIONS` organizations, the rest are `other`: the ones
with the most Queued deployments (held ones included), as the database ranks them. Every worker process, on
every host, reads that ranking once in each 5-minute window of the wall clock, and so does the scheduler for
`mdmq_organization_held` / `mdmq_organization_paced`, so that the series an alert joins name the same
organizations. Processes agree except for the organization at the edge of the ranking during the seconds
each takes to read it again; the bound holds in each process, and so in their sum.

A worker process keeps the series of an organization that has left the ranking (prometheus_client's
multiprocess files cannot drop one) until it restarts; they no longer change, so `rate()` over them is 0.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from prometheus_client import Histogram

from models.database import DATABASE_ERRORS, Session
from models.store.dispatch import Claimed
from models.store.organizations import busiest_organizations

log = logging.getLogger(__name__)

SessionFactory = Callable[[], AbstractContextManager[Session]]

# A constant rather than a setting: the workers and the scheduler must name the same organizations for
# the alert's join, and one number in the code cannot differ between their environments. 21 values of the
# label, 16 series each (14 buckets, sum, count) per host.
NAMED_ORGANIZATIONS = 20
OTHER = "other"
# The ranking's window. At most the alert's 5 minutes: a deployment that waited longer was Queued through
# a whole window, so its organization's work was counted by the ranking in effect when its wait ends. Not
# less: each process pays the query, 0.06 s at 100k Queued and 0.26 s at 1M (benchmarks/queue_wait.py).
REFRESH_S = 300

# From half a second (a healthy queue) to an hour (a held organization released), with a bound at 300 s:
# the alert's 5 minutes is then a bucket's edge, and `histogram_quantile` reads it without interpolating.
BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)

QUEUE_WAIT = Histogram(
    "mdmq_queue_wait_seconds",
    "Seconds from a deployment's create to its first push attempt, by organization: each of the "
    f"{NAMED_ORGANIZATIONS} with the most Queued deployments by its id, every other one as `other`.",
    ["organization"],
    buckets=BUCKETS_S,
)


class OrganizationLabels:
    """The `organization` label of the queue wait: each of the `k` busiest organizations by its id, every
    other one `other`.
    The ranking is read from the database once per `REFRESH_S` window of the wall clock (the same window in
    every process whose clock is right), by one thread of the process while the others go on with the last
    one."""

    def __init__(self, k: int = NAMED_ORGANIZATIONS) -> None:
        self.k = k
        self._named: frozenset[str] = frozenset()
        self._window: int | None = None
        self._lock = threading.Lock()

    @property
    def named(self) -> frozenset[str]:
        return self._named

    def label(self, organization_id: str) -> str:
        return organization_id if organization_id in self._named else OTHER

    def forget(self) -> None:
        """Read the ranking again at the next refresh, whatever the window (a process whose database
        changed: a test's)."""
        self._window = None

    def refresh(self, session: SessionFactory, *, now: datetime) -> None:
        """Read the ranking again when the window of `now` is not the one last read; the first read is
        waited for, later ones are left to the thread that took them."""
        window = int(now.timestamp() // REFRESH_S)
        if window == self._window or not self._lock.acquire(blocking=self._window is None):
            return
        try:
            if window != self._window:
                with session() as s:
                    self._named = frozenset(busiest_organizations(s, limit=self.k))
                self._window = window
        except DATABASE_ERRORS as e:  # the ranking is only a label: the dispatch goes on with the last one
            log.warning("could not read the busiest organizations: %s", type(e).__name__)
        finally:
            self._lock.release()


LABELS = OrganizationLabels()


def observe_queue_wait(
    session: SessionFactory,
    claimed: Sequence[Claimed],
    *,
    now: datetime,
    labels: OrganizationLabels = LABELS,
    histogram: Histogram = QUEUE_WAIT,
) -> int:
    """Observe the wait of each claimed deployment whose push this is the first attempt of (the claim
    counted its first wake-up); returns how many.

    A push turned away (a 5xx, a refused credential) gives its wake-up back, and the next attempt is
    observed again, from the same create: the wait until a push that can reach the device. A message
    delivered twice claims its deployments twice, their count still 1: observed twice, once late."""
    first = [c for c in claimed if c.attempt_count == 1]
    if first:
        labels.refresh(session, now=now)
    waits: dict[str, list[float]] = defaultdict(list)  # by label: one look-up of its series per chunk
    for c in first:
        waits[labels.label(c.organization_id)].append(max((now - c.created_at).total_seconds(), 0.0))
    for label, seconds in waits.items():
        series = histogram.labels(label)
        for wait_s in seconds:
            series.observe(wait_s)
    return len(first)
