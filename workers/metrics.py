"""The metrics a worker emits where pushes happen. In worker processes prometheus_client runs in multiprocess
mode (`mdmq worker` sets the directory before anything imports it), and Dramatiq's exposition server serves
the sum over the processes.

Labels stay low in cardinality: a provider's reason is kept only when it is one of the words the providers
document (or mdmq's own for a push that got no answer); anything else is its HTTP status or `other`.
"""

from __future__ import annotations

import collections

from prometheus_client import Counter

from models.enums import Provider
from workers.providers import aosp, apns_reasons, fcm
from workers.providers.aosp import KNOWN_CODES as AOSP_CODES
from workers.providers.apns_reasons import KNOWN_REASONS as APNS_REASONS
from workers.providers.base import Outcome, PushResult
from workers.providers.factory import CONNECTIONS_OPEN, PROVIDERS_ALIVE, PROVIDERS_EVICTED
from workers.providers.fcm import KNOWN_ERROR_CODES as FCM_CODES
from workers.providers.timing import CLOCK_SKEW_REFUSALS, PUSH_DURATION, count_clock_skew_refusal

__all__ = [
    "CLOCK_SKEW_REFUSALS",
    "CONNECTIONS_OPEN",
    "HOLDS",
    "PROVIDERS_ALIVE",
    "PROVIDERS_EVICTED",
    "PUSHES",
    "PUSH_DURATION",
    "TOKENS_INVALIDATED",
    "count_answers",
    "count_clock_skew_refusal",
    "reason_label",
]

PUSHES = Counter(
    "mdmq_push_requests",
    "Pushes answered, one per device woken, by provider, outcome and the provider's reason "
    "('none' when accepted).",
    ["provider", "outcome", "reason"],
)
HOLDS = Counter(
    "mdmq_holds",
    "Deployments held because the provider refused the organization's credential, by provider.",
    ["provider"],
)
TOKENS_INVALIDATED = Counter(
    "mdmq_push_tokens_invalidated",
    "Device tokens marked invalid on a provider's answer, by organization, provider and provider's reason.",
    ["organization", "provider", "reason"],
)

# Each provider's documented answers and the outcome each means: with acceptance, the push series that are
# at 0 from the start, so that the first such answer shows in rate() and the alerts.
DOCUMENTED_OUTCOMES = {
    Provider.apns: apns_reasons.DOCUMENTED_OUTCOMES,
    Provider.fcm: fcm.DOCUMENTED_OUTCOMES,
    Provider.aosp: aosp.DOCUMENTED_OUTCOMES,
}
for _provider in Provider:  # a series at 0 for each, so that the first hold shows in rate()
    HOLDS.labels(_provider.value)
    PUSHES.labels(_provider.value, Outcome.accepted.value, "none")
    for _reason, _outcome in DOCUMENTED_OUTCOMES[_provider].items():
        PUSHES.labels(_provider.value, _outcome.value, _reason)

# mdmq's own words for a push that got no answer, beside the providers' documented reasons.
_OWN_REASONS = frozenset(
    {
        "ConnectionFailed",
        "Unanswered",
        "MissingPushMagic",
        "OAUTH_REFUSED",
        "OAUTH_UNAVAILABLE",
        "TimeoutError",
        "ProviderError",
        "ClockSkewRefused",
        "credential_replaced",
        "hold_released",
        "failed",  # a token the AOSP push service lists in its answer's info.failed
    }
)
KNOWN_REASONS = APNS_REASONS | FCM_CODES | AOSP_CODES | _OWN_REASONS


def reason_label(result: PushResult) -> str:
    """The `reason` label of one answer: a documented word, `http_<status>`, or `other`."""
    if result.outcome is Outcome.accepted:
        return "none"
    word = (result.reason or "").partition(":")[0].strip().replace(" ", "_")
    if word in KNOWN_REASONS:
        return word
    return f"http_{result.status}" if result.status else "other"


def count_answers(provider: str, results: list[PushResult]) -> None:
    # Counted by label first: a labelled increment costs a lock and a write to the multiprocess file.
    counts = collections.Counter((result.outcome.value, reason_label(result)) for result in results)
    for (outcome, reason), count in counts.items():
        PUSHES.labels(provider, outcome, reason).inc(count)
