"""The safety valve's verdict on a credential's window of answers (DESIGN §4.3): one dead token among
working ones is the device's, the same answer for most of a credential's devices is the credential's, and
too few answers decide nothing. [A-RESP] BadDeviceToken and DeviceTokenNotForTopic, [F-ERR]
SENDER_ID_MISMATCH: what the providers say for every device of a wrong certificate or project."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from workers.providers.base import Outcome, PushResult
from workers.services.valve import SettledWindows, Valve, Verdict, answer_marks

VALVE = Valve(window=200, min_answers=20, dead_share=0.2)


def more(answers: bool) -> Callable[[], bool]:
    """`answers_to_come`: whether another device may still add to the window."""
    return lambda: answers


def six(n: int) -> int:
    """A credential that serves 6 devices, counted up to n."""
    return min(6, n)


def many(n: int) -> int:
    """A credential that serves more devices than are ever asked for."""
    return n


def not_asked() -> bool:
    raise AssertionError("asked whether more answers come for a window large enough to judge")


def test_one_dead_token_among_working_answers_is_the_devices() -> None:
    verdict = VALVE.judge("a" * 199 + "d", devices_served=lambda n: 10_000, answers_to_come=not_asked)
    assert verdict is Verdict.device


def test_a_fifth_or_more_of_dead_tokens_is_the_organizations() -> None:
    def judge(sample: str) -> Verdict:
        return VALVE.judge(sample, devices_served=lambda n: 10_000, answers_to_come=not_asked)

    assert judge("a" * 80 + "d" * 20) is Verdict.organization
    assert judge("d" * 100) is Verdict.organization
    assert judge("a" * 81 + "d" * 19) is Verdict.device


def test_too_few_answers_decide_nothing_until_every_device_of_a_small_fleet_answered() -> None:
    assert VALVE.judge("a" * 5 + "d", devices_served=lambda n: 10_000, answers_to_come=more(True)) is (
        Verdict.undecided
    )
    # A fleet of 6 devices that all answered: enough to judge, though under 20 answers.
    assert VALVE.judge("a" * 5 + "d", devices_served=six, answers_to_come=not_asked) is Verdict.device
    assert VALVE.judge("dddddd", devices_served=six, answers_to_come=not_asked) is Verdict.organization
    assert VALVE.judge("aaaadd", devices_served=six, answers_to_come=not_asked) is Verdict.organization


def test_too_few_answers_with_none_to_come_are_judged_by_whether_the_credential_works_at_all() -> None:
    """Answers lost with a killed worker, or a rollout to a few of the credential's devices: the window
    stays under 20 answers for good. Waiting would push the dead tokens until their deadline."""
    assert VALVE.judge("a" * 16 + "dd", devices_served=many, answers_to_come=more(False)) is Verdict.device
    assert VALVE.judge("aaaadd", devices_served=many, answers_to_come=more(False)) is Verdict.device
    assert VALVE.judge("dd", devices_served=many, answers_to_come=more(False)) is Verdict.organization
    assert VALVE.judge("a" * 16 + "dd", devices_served=many, answers_to_come=more(True)) is (
        Verdict.undecided
    )


def test_the_fleet_is_counted_only_when_the_window_is_small() -> None:
    def never(n: int) -> int:
        raise AssertionError("counted the devices of a window of 20 answers or more")

    assert VALVE.judge("a" * 19 + "d", devices_served=never, answers_to_come=not_asked) is Verdict.device


@pytest.mark.parametrize(
    ("outcome", "mark"),
    [
        (Outcome.accepted, "a"),
        (Outcome.permanent, "a"),  # 410 Unregistered [A-RESP]: only a working credential and topic get it
        (Outcome.dead_token, "d"),
        (Outcome.transient, ""),
        (Outcome.payload_rejected, ""),
        (Outcome.credential, ""),
        (Outcome.config, ""),
    ],
)
def test_only_answers_that_say_something_about_the_credential_enter_the_window(
    outcome: Outcome, mark: str
) -> None:
    assert answer_marks([PushResult("d1", outcome)]) == mark


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_live_answers_to_a_window_known_full_of_them_need_no_write_for_a_while() -> None:
    clock = Clock()
    valve = Valve(window=200, settled=SettledWindows(fresh_s=10.0, clock=clock))
    assert valve.needs_writing("f", "a" * 250), "nothing known yet"
    valve.settled.read("f", "a" * 200, full=200)
    assert not valve.needs_writing("f", "a" * 250), "a full window of live answers stays as it is"
    assert valve.needs_writing("f", "a" * 249 + "d"), "a dead-token answer is always written and judged"
    assert valve.needs_writing("other", "a"), "per credential"
    assert not valve.needs_writing("f", ""), "no answer that says anything: nothing to write"
    clock.now = 10.0
    assert valve.needs_writing("f", "a"), "trusted for fresh_s only"


def test_a_window_not_full_of_live_answers_is_not_settled() -> None:
    valve = Valve(window=200)
    valve.settled.read("f", "a" * 199, full=200)
    assert valve.needs_writing("f", "a"), "not full yet"
    valve.settled.read("f", "a" * 200, full=200)
    valve.settled.read("f", "a" * 199 + "d", full=200)
    assert valve.needs_writing("f", "a"), "a dead-token answer in it: every answer counts again"
