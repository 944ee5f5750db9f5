"""How long a provider takes to answer one push request: observed around the request itself, in each
provider, so that the figure is the provider's and not the batch's."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

from prometheus_client import Histogram

T = TypeVar("T")

PUSH_DURATION = Histogram(
    "mdmq_push_duration_seconds",
    "Time from sending a push request to the provider's answer (or to its failure), by provider.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


async def timed(provider: str, request: Awaitable[T]) -> T:
    """Await one push request, observing how long the provider took to answer it."""
    started = time.perf_counter()
    try:
        return await request
    finally:
        PUSH_DURATION.labels(provider).observe(time.perf_counter() - started)
