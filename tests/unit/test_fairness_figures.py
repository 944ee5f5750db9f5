"""The fairness benchmark's arithmetic: percentiles, the busiest second, the medians of runs."""

from __future__ import annotations

from benchmarks.fairness import beside_alone, medians, most_in_a_second, spread


def test_spread_takes_nearest_rank_percentiles_and_counts_the_missing() -> None:
    figures = spread([*(float(i) for i in range(1, 101)), None])

    assert figures == {"n": 100, "missing": 1, "p50": 50.0, "p99": 99.0, "max": 100.0}


def test_spread_of_nothing_reached_says_so() -> None:
    assert spread([None, None]) == {"n": 0, "missing": 2}


def test_the_busiest_second_is_any_window_not_calendar_seconds() -> None:
    # Three in 0.9-1.8 s straddle the second boundary; no window of 1 s holds four.
    moments = [0.0, 0.9, 1.2, 1.8, 2.95]

    assert most_in_a_second(moments) == 3
    assert most_in_a_second([]) == 0
    assert most_in_a_second([5.0, 5.0, 5.0]) == 3


def test_medians_go_key_by_key_through_nested_figures() -> None:
    runs = [
        {"a": 1.0, "b": {"p99": 9.0}, "complete": True, "late": None, "each": [1.0, 2.0]},
        {"a": 3.0, "b": {"p99": 1.0}, "complete": False, "late": 4.0},
        {"a": 2.0, "b": {"p99": 5.0}, "complete": True},
    ]

    assert medians(runs) == {"a": 2.0, "b": {"p99": 5.0}, "complete": False, "late": 4.0}


def test_beside_alone_pairs_each_run_with_the_one_after_it() -> None:
    together = [{"total_s": 12.0}, {"total_s": 30.0}, {"total_s": 11.0}]
    alone = [{"total_s": 10.0}, {"total_s": 20.0}, {"total_s": 10.0}]

    summary = beside_alone(together, alone, ("with", "alone"), "total_s")

    assert summary["total_vs_alone_by_round"] == [1.2, 1.5, 1.1]
    assert summary["total_vs_alone"] == 1.2
    assert summary["total_vs_alone_of_medians"] == 1.2  # 12 / 10
    assert summary["with"] == {"total_s": 12.0}
