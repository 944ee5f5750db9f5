"""The push counter's `reason` label: a provider's documented word, else its HTTP status, else `other` —
never whatever text a provider (or a broken one) sent, which would make a series per answer."""

from __future__ import annotations

import pytest

from workers.metrics import reason_label
from workers.providers.base import Outcome, PushResult


@pytest.mark.parametrize(
    ("result", "label"),
    [
        (PushResult("d", Outcome.accepted, "id", 200), "none"),
        (PushResult("d", Outcome.permanent, None, 410, "Unregistered"), "Unregistered"),
        (PushResult("d", Outcome.transient, None, 429, "TooManyRequests"), "TooManyRequests"),
        (PushResult("d", Outcome.transient, None, 429, "QUOTA_EXCEEDED"), "QUOTA_EXCEEDED"),
        (PushResult("d", Outcome.transient, None, None, "Unanswered: GOAWAY"), "Unanswered"),
        (PushResult("d", Outcome.transient, None, None, "credential replaced"), "credential_replaced"),
        (PushResult("d", Outcome.transient, None, 502, "<html>Bad gateway</html>"), "http_502"),
        (PushResult("d", Outcome.transient, None, None, "x" * 300), "other"),
    ],
)
def test_the_reason_label_is_a_known_word_a_status_or_other(result: PushResult, label: str) -> None:
    assert reason_label(result) == label
