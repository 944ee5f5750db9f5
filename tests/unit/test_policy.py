"""The retry policy: back-off, the limits per kind, and organization overrides."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from models.statuses import Kind
from workers.policy import InvalidPolicy, KindPolicy, Lane, RetryPolicy, backoff_s, lanes, next_attempt_at

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_backoff_doubles_up_to_its_ceiling_with_jitter_in_the_upper_half() -> None:
    rng = random.Random(7)
    waits = [backoff_s(attempt, 300, 3600, rng) for attempt in range(1, 8)]
    ceilings = [300, 600, 1200, 2400, 3600, 3600, 3600]
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling


def test_a_postponed_profile_is_retried_until_its_postpones_run_out() -> None:
    policy = RetryPolicy.defaults()[Kind.profile]
    created = NOW - timedelta(hours=1)

    first = next_attempt_at(policy, postpones=1, created_at=created, now=NOW)
    assert first is not None
    assert NOW + timedelta(seconds=150) <= first <= NOW + timedelta(seconds=300)
    last = policy.max_postpones - 1
    assert next_attempt_at(policy, postpones=last, created_at=created, now=NOW) is not None
    assert next_attempt_at(policy, postpones=policy.max_postpones, created_at=created, now=NOW) is None


def test_no_retry_is_scheduled_past_the_deadline() -> None:
    policy = RetryPolicy.defaults()[Kind.profile]
    created = NOW - timedelta(seconds=policy.deadline_s - 60)  # a minute left, the next try is minutes away

    assert next_attempt_at(policy, postpones=3, created_at=created, now=NOW) is None


def test_an_organization_overrides_only_what_it_names() -> None:
    policy = RetryPolicy.defaults().overridden({"profile": {"max_postpones": 20, "deadline_s": 7 * 86_400}})

    assert policy[Kind.profile].max_postpones == 20
    assert policy[Kind.profile].deadline_s == 7 * 86_400
    assert policy[Kind.profile].postpone_first_s == RetryPolicy.defaults()[Kind.profile].postpone_first_s
    assert policy[Kind.app] == RetryPolicy.defaults()[Kind.app]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"profiles": {"max_postpones": 3}}, "unknown kind 'profiles'"),
        ({"profile": {"max_retries": 3}}, "may set only"),
        ({"profile": {"max_postpones": -1}}, "numbers >= 0"),
        ({"profile": {"max_postpones": "3"}}, "numbers >= 0"),
        ({"profile": {"max_postpones": 2.5}}, "whole numbers"),
        ({"app": ["max_postpones"]}, "may set only"),
    ],
)
def test_a_bad_override_is_a_clear_error(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidPolicy, match=message):
        RetryPolicy.defaults().overridden(overrides)


def test_limits_are_named_not_placed() -> None:
    with pytest.raises(TypeError):
        KindPolicy(12, 3 * 86_400, 300, 4 * 3600, 8, 600, 6 * 3600)  # type: ignore[call-arg]
    assert RetryPolicy.defaults()[Kind.security_action].deadline_s == 86_400


def test_security_actions_urgent_and_lone_deployments_take_the_urgent_lane_rollouts_the_bulk_one() -> None:
    chosen = lanes(
        [
            ("p1", "acme", Kind.profile, False),
            ("w1", "acme", Kind.security_action, False),
            ("p2", "acme", Kind.profile, False),
            ("u1", "acme", Kind.profile, True),
            ("u2", "acme", Kind.message, True),
            ("a1", "globex", Kind.app, False),
        ]
    )

    assert chosen == [
        ("acme", Lane.bulk, ["p1", "p2"]),
        ("acme", Lane.urgent, ["w1", "u1", "u2"]),
        ("globex", Lane.urgent, ["a1"]),
    ]
