"""The safety valve: is a "dead token" answer the device's, or the organization's credential's?

APNs answers `BadDeviceToken` for a token of the other environment and `DeviceTokenNotForTopic` for a token
of another topic [A-RESP]; FCM answers `SENDER_ID_MISMATCH` for a token of another sender [F-ERR]. A
certificate of the wrong environment or topic, or a service account of another Firebase project, makes
*every* device of an organization say so. One such answer among working ones is the device's; the same
answer for most of a credential's devices is the credential's. So each is judged on the credential's last
answers, kept in the database for every worker process and host (`models.store.holds.record_answers`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum

from models.store.holds import ANSWER_ALIVE, ANSWER_DEAD
from workers.providers.base import Outcome, PushResult


class Verdict(StrEnum):
    device = "device"  # invalidate the tokens that got the answer
    organization = "organization"  # hold the organization's pushes through this provider; touch no token
    undecided = "undecided"  # too few answers to tell: the pushes go again with the next batch


class SettledWindows:
    """Credentials whose window this process last read full of live answers, and when.

    Live answers added to a window full of them leave it as it was, so a batch with no dead-token answer
    need not be written while the window is known settled: the common case of a rollout, one statement a
    chunk saved. Should another process have added dead-token answers meanwhile, the live ones left out
    only make the valve lean to the organization's side, never to invalidating tokens; and the memory is
    trusted for `fresh_s` only."""

    def __init__(self, *, fresh_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._fresh_s = fresh_s
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def settled(self, fingerprint: str) -> bool:
        with self._lock:
            seen = self._seen.get(fingerprint)
        return seen is not None and self._clock() - seen < self._fresh_s

    def read(self, fingerprint: str, window: str, *, full: int) -> None:
        with self._lock:
            if len(window) >= full and ANSWER_DEAD not in window:
                self._seen[fingerprint] = self._clock()
            else:
                self._seen.pop(fingerprint, None)


@dataclass(frozen=True)
class Valve:
    window: int = 200  # answers of the credential judged, the current batch included
    min_answers: int = 20  # fewer than min(this, devices the credential serves) is too few to judge
    dead_share: float = 0.2  # dead-token answers at this share of the window or more: the organization's
    settled: SettledWindows = field(default_factory=SettledWindows, compare=False, repr=False)

    def needs_writing(self, fingerprint: str, marks: str) -> bool:
        """Whether a batch's answers must go to the credential's window: any dead-token answer must, live
        ones only while the window is not known full of live answers already."""
        return bool(marks) and (ANSWER_DEAD in marks or not self.settled.settled(fingerprint))

    def judge(
        self, sample: str, *, devices_served: Callable[[int], int], answers_to_come: Callable[[], bool]
    ) -> Verdict:
        """`sample`: the window's answers, one character each. `devices_served(n)`: how many devices the
        credential serves, counted up to n; `answers_to_come()`: whether another device may still add an
        answer to the window. Both are asked only when the sample is small.

        A small sample waits for more answers only while more can come. The window may never reach
        min(min_answers, devices served): a worker killed between its pushes and writing their answers
        loses them, and those devices check in and are not pushed again; a rollout may reach a few of the
        credential's devices. With nothing more to come, the sample is judged as it stands, by whether the
        credential works at all: a wrong topic, environment or project gets a dead-token answer for every
        device [A-RESP] [F-ERR], so one live answer makes the dead ones the devices' own, and none holds
        the organization (nothing invalidated, and a probe or a credential releases it)."""
        answers, dead = len(sample), sample.count(ANSWER_DEAD)
        if answers < self.min_answers and answers < devices_served(self.min_answers):
            if answers_to_come():
                return Verdict.undecided
            return Verdict.organization if dead == answers else Verdict.device
        return Verdict.organization if dead >= self.dead_share * answers else Verdict.device


def answer_marks(results: list[PushResult], *, counted: Collection[str] | None = None) -> str:
    """The window's characters for a batch's answers: dead-token answers, and answers that only a working
    credential gets (accepted, 410 Unregistered). Transient, payload and holding answers say nothing.
    `counted`: keep only the dead-token answers of these devices (those the window does not count yet)."""
    marks = {Outcome.accepted: ANSWER_ALIVE, Outcome.permanent: ANSWER_ALIVE, Outcome.dead_token: ANSWER_DEAD}
    return "".join(
        marks.get(r.outcome, "")
        for r in results
        if counted is None or r.outcome is not Outcome.dead_token or r.device_id in counted
    )
