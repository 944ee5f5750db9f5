"""The device-report vocabulary: aliases, unknown reports, and the mapping per kind."""

from __future__ import annotations

import pytest

from models.reports import TARGETS, Report, UnknownReport, parse_report, targets_for
from models.statuses import STATUSES, Kind, Status


@pytest.mark.parametrize(
    ("raw", "report"),
    [
        ("Acknowledged", Report.acknowledged),
        ("Error", Report.error),
        ("NotNow", Report.not_now),
        ("not_now", Report.not_now),
        ("user_acknowledged", Report.user_acknowledged),
    ],
)
def test_apple_aliases_and_our_own_words_parse(raw: str, report: Report) -> None:
    assert parse_report(raw) is report


@pytest.mark.parametrize("raw", ["", "notnow", "ACKNOWLEDGED", "done", "Acknowledged "])
def test_an_unknown_report_is_a_clear_error(raw: str) -> None:
    with pytest.raises(UnknownReport, match="unknown device report"):
        parse_report(raw)


def test_every_report_lands_in_a_status_of_the_kind_it_applies_to() -> None:
    for kind, targets in TARGETS.items():
        assert set(targets.values()) <= STATUSES[kind], kind


def test_the_same_report_speaks_each_kinds_spelling() -> None:
    assert targets_for(Report.processing) == {
        Kind.profile: Status.in_progress,
        Kind.app: Status.in_progress,
        Kind.security_action: Status.action_in_progress,
        Kind.message: Status.in_progress,
    }
    assert targets_for(Report.not_now) == {Kind.profile: Status.postponed, Kind.app: Status.postponed}
    assert targets_for(Report.accepted) == {Kind.security_action: Status.accepted_by_device}
