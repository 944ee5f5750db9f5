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


def test_an_organization_paced_again_keeps_to_the_bulk_lane_while_its_chunks_wait_there() -> None:
    """Each lane books an organization's slots apart: its new chunks go after the old ones, at the new rate,
    not beside them in the paced lane."""
    lanes = _lanes()
    lanes.bulk.queue.put("acme", [["d1"]])
    paced = FairShare(wake_rate_per_s=50.0)
    assert lanes.lane_of("initech", paced) is FairLaneName.paced, "by the rate alone"

    assert lanes.lane_of("acme", paced) is FairLaneName.bulk
    assert lanes.bulk.queue.take("token-1").organization_id == "acme"
    assert lanes.lane_of("acme", paced) is FairLaneName.paced, "taken (claimed) is no longer waiting"


@pytest.mark.parametrize(("rate_now", "paced_max_rate"), [(None, 200.0), (100_000.0, 200.0), (50.0, 0.0)])
def test_an_organization_that_leaves_the_paced_lane_goes_to_the_bulk_lane_at_once(
    rate_now: float | None, paced_max_rate: float
) -> None:
    """Unpaced, paced beyond the lane's limit, or the lane turned off, with chunks still waiting in the
    paced lane: its new chunks never fill the urgent lane's threads."""
    lanes = _lanes(paced_max_rate)
    lanes.paced.queue.put("acme", [["d1"]], rate_per_s=50.0)
    assert lanes.lane_of("acme", FairShare(wake_rate_per_s=rate_now)) is FairLaneName.bulk
