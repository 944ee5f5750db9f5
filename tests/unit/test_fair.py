"""The fair queue's arithmetic: chunk sizes, bookings, strides, and the pacing bound under late workers."""

from __future__ import annotations

import random

import pytest

from workers.fair import STRIDE, advance, book, paced_chunk_size
from workers.fair.memory import MemoryFairQueue


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("rate", "size"), [(None, 250), (50.0, 5), (4.0, 1), (0.5, 1), (10_000.0, 250), (100.0, 10), (25.0, 2)]
)
def test_a_paced_chunk_carries_a_tenth_of_the_rate_at_most_and_one_at_least(
    rate: float | None, size: int
) -> None:
    assert paced_chunk_size(250, rate) == size


def test_bookings_follow_each_other_at_the_rate_and_never_start_in_the_past() -> None:
    times, booked = book(100.0, 90.0, sizes=[10, 10, 5], rate_per_s=50.0)
    assert times == pytest.approx([100.0, 100.2, 100.4])
    assert booked == pytest.approx(100.5)
    later, _ = book(100.1, booked, sizes=[10], rate_per_s=50.0)
    assert later == pytest.approx([100.5]), "after the bookings already made"
    assert book(100.0, 200.0, sizes=[10, 10], rate_per_s=None) == ([100.0, 100.0], 200.0)


def test_a_take_advances_by_its_size_divided_by_the_weight_kept_within_bounds() -> None:
    assert advance(1, 1) == 2 * advance(1, 2) == 10 * advance(1, 10) == advance(100, 100) == STRIDE
    assert advance(250, 1) == 250 * advance(1, 1) == 125 * advance(2, 1)
    assert advance(1, 0) == advance(1, 1)
    assert advance(1, 1_000) == advance(1, 100)
    # Rounded once per take, not per deployment: under 1 off whatever the size.
    assert advance(250, 3) == 250 * STRIDE // 3


def test_the_passes_stay_exact_in_a_double_for_a_year_at_100_000_pushes_a_second() -> None:
    """Redis keeps the passes as sorted-set scores (doubles), exact to 2**53."""
    year_of_pushes = 100_000 * 365 * 24 * 3600
    assert year_of_pushes * advance(1, 1) < 2**53


def test_late_workers_never_send_a_paced_organization_beyond_its_rate_in_any_second() -> None:
    """Workers that come every 0-100 ms (a busy pool, or delayed tokens due within a poll) and take all that
    may go each time, and once are all busy elsewhere for 3 s: the chunks that fell due meanwhile go no
    closer together than the burst allows, so no 1-second window sees more than 1.2 times the rate, and the
    whole takes about n / rate (plus the stall, made up only at `CATCH_UP_PACE` times the rate)."""
    rate, devices = 50.0, 3_000
    clock, rng = Clock(), random.Random(7)
    fair = MemoryFairQueue(clock)
    size = paced_chunk_size(250, rate)
    fair.put("acme", [[f"d{i}"] * size for i in range(devices // size)], rate_per_s=rate)
    start, sent = clock.now, list[tuple[float, int]]()  # (time, pushes)
    while len(sent) < devices // size:
        clock.now += 3.0 if len(sent) == 100 and clock.now < start + 20 else rng.uniform(0.0, 0.1)
        while (taken := fair.take(f"m{len(sent)}")).deployment_ids is not None:
            sent.append((clock.now, len(taken.deployment_ids)))
    for at, _ in sent:
        in_window = sum(n for t, n in sent if at <= t < at + 1.0)
        assert in_window <= 1.2 * rate, (at, in_window)
    assert clock.now - start == pytest.approx(devices / rate + 3.0, rel=0.1)
