"""Which fair lane an organization's chunks go to (`workers.enqueue.FairLanes.lane_of`): by its rate at the
put, unless its earlier chunks still wait in the other lane."""

from __future__ import annotations

import pytest

from models.store.organizations import FairShare
from workers.enqueue import FairLane, FairLanes
from workers.fair import FairLaneName
from workers.fair.memory import MemoryFairQueue


def _lanes(paced_max_rate: float = 200.0) -> FairLanes:
    return FairLanes(
        bulk=FairLane(MemoryFairQueue(), lambda _: None),
        paced=FairLane(MemoryFairQueue(), lambda _: None),
        paced_max_rate=paced_max_rate,
    )


@pytest.mark.parametrize(
    ("rate", "paced_max_rate", "lane"),
    [
        (None, 200.0, FairLaneName.bulk),  # unpaced
        (50.0, 200.0, FairLaneName.paced),
        (200.0, 200.0, FairLaneName.paced),  # at the limit
        (200.5, 200.0, FairLaneName.bulk),  # faster than the lane serves
        (50.0, 0.0, FairLaneName.bulk),  # no paced lane
    ],
)
def test_an_organization_goes_to_the_lane_of_its_rate(
    rate: float | None, paced_max_rate: float, lane: FairLaneName
) -> None:
    assert _lanes(paced_max_rate).lane_of("acme", FairShare(wake_rate_per_s=rate)) is lane


@pytest.mark.parametrize(
    ("waiting_in", "rate_now"),
    [(FairLaneName.paced, 500.0), (FairLaneName.paced, None), (FairLaneName.bulk, 50.0)],
)
def test_an_organization_keeps_to_the_lane_its_chunks_wait_in_until_they_are_taken(
    waiting_in: FairLaneName, rate_now: float | None
) -> None:
    lanes = _lanes()
    queue = lanes[waiting_in].queue
    queue.put("acme", [["d1"]], rate_per_s=50.0 if waiting_in is FairLaneName.paced else None)
    share = FairShare(wake_rate_per_s=rate_now)
    by_rate = lanes.lane_of("initech", share)
    assert by_rate is not waiting_in, "the rate alone would choose the other lane"

    # Its rate changed across the limit while its chunk waits: one booking, in the lane it waits in.
    assert lanes.lane_of("acme", share) is waiting_in
    assert queue.take("token-1").organization_id == "acme"
    assert lanes.lane_of("acme", share) is by_rate, "taken (claimed) is no longer waiting"
