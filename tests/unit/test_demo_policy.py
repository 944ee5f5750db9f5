"""The demo organization's retry policy, which the demo and the fault suite roll out under."""

from __future__ import annotations

import pytest

from models.statuses import Kind
from sandbox.rollout import demo_limits
from workers.policy import RetryPolicy


@pytest.mark.parametrize("devices", [200, 2_000, 20_000, 100_000])
def test_the_deadline_comes_after_a_silent_device_had_all_its_pushes(devices: int) -> None:
    """A deployment fails on its pushes or on its deadline; were the deadline first, a device still waiting
    for its next wake-up (one that lost a check-in to an outage) would fail though it would have answered."""
    policy = RetryPolicy.defaults().overridden(demo_limits(devices))
    for kind in Kind:
        limits = policy[kind]
        # The longest the re-push waits can add up to: each at its ceiling, the jitter at its top.
        window = sum(
            min(limits.push_max_s, limits.push_first_s * 2**attempt) for attempt in range(limits.max_pushes)
        )
        assert limits.deadline_s > window
        assert limits.deadline_s >= 900, "never shorter than a quarter of an hour"
