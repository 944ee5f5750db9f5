"""The metrics the providers observe themselves: how long a provider takes to answer one push request
(observed around the request itself, so that the figure is the provider's and not the batch's), and the
credential exchanges refused for this host's clock. `workers.metrics` serves them with the others."""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Awaitable
from typing import TypeVar

from prometheus_client import Counter, Histogram

T = TypeVar("T")

PUSH_DURATION = Histogram(
    "mdmq_push_duration_seconds",
    "Time from sending a push request to the provider's answer (or to its failure), by provider.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CLOCK_SKEW_REFUSALS = Counter(
    "mdmq_clock_skew_refusals",
    "Credential exchanges a provider refused for this host's clock (an OAuth assertion's iat/exp), by "
    "provider and host: the host's clock is to be fixed, the credential is fine.",
    ["provider", "host"],
)
# This host's series at 0 for the one provider that exchanges credentials (FCM's OAuth), so that its first
# refusal shows in increase() and the dashboard's panel exists before anything goes wrong.
CLOCK_SKEW_REFUSALS.labels("fcm", socket.gethostname())


async def timed(provider: str, request: Awaitable[T]) -> T:
    """Await one push request, observing how long the provider took to answer it."""
    started = time.perf_counter()
    try:
        return await request
    finally:
        _duration(provider).observe(time.perf_counter() - started)


@functools.cache
def _duration(provider: str) -> Histogram:
    # The labelled child, looked up once: `labels()` takes a lock and builds a key on every push.
    return PUSH_DURATION.labels(provider)


def count_clock_skew_refusal(provider: str, host: str) -> None:
    CLOCK_SKEW_REFUSALS.labels(provider, host).inc()
