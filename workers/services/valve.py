"""The safety valve: is a "dead token" answer the device's, or the organization's credential's?

APNs answers `BadDeviceToken` for a token of the other environment and `DeviceTokenNotForTopic` for a token
of another topic [A-RESP]; FCM answers `SENDER_ID_MISMATCH` for a token of another sender [F-ERR]. A
certificate of the wrong environment or topic, or a service account of another Firebase project, makes
*every* device of an organization say so. One such answer among working ones is the device's; the same
answer for most of a credential's devices is the credential's. So each is judged on the credential's last
answers, kept in the database for every worker process and host (`models.store.holds.record_answers`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from models.store.holds import ANSWER_ALIVE, ANSWER_DEAD
from workers.providers.base import Outcome, PushResult


class Verdict(StrEnum):
    device = "device"  # invalidate the tokens that got the answer
    organization = "organization"  # hold the organization's pushes through this provider; touch no token
    undecided = "undecided"  # too few answers to tell: the pushes go again with the next batch


@dataclass(frozen=True)
class Valve:
    window: int = 200  # answers of the credential judged, the current batch included
    min_answers: int = 20  # fewer than min(this, devices the credential serves) is too few to judge
    dead_share: float = 0.2  # dead-token answers at this share of the window or more: the organization's

    def judge(self, sample: str, *, devices_served: Callable[[int], int]) -> Verdict:
        """`sample`: the window's answers, one character each. `devices_served(n)`: how many devices the
        credential serves, counted up to n (asked only when the sample is small)."""
        answers, dead = len(sample), sample.count(ANSWER_DEAD)
        if answers < self.min_answers and answers < devices_served(self.min_answers):
            return Verdict.undecided
        return Verdict.organization if dead >= self.dead_share * answers else Verdict.device


def answer_marks(results: list[PushResult]) -> str:
    """The window's characters for a batch's answers: dead-token answers, and answers that only a working
    credential gets (accepted, 410 Unregistered). Transient, payload and holding answers say nothing."""
    marks = {Outcome.accepted: ANSWER_ALIVE, Outcome.permanent: ANSWER_ALIVE, Outcome.dead_token: ANSWER_DEAD}
    return "".join(marks.get(result.outcome, "") for result in results)
