"""The metrics the store emits where transitions happen."""

from __future__ import annotations

from prometheus_client import Counter

TRANSITIONS = Counter(
    "mdmq_transitions",
    "Deployment status transitions applied, by kind and the status moved to.",
    ["kind", "status"],
)
TRANSITION_REFUSALS = Counter(
    "mdmq_transition_refusals",
    "Transitions refused because they did not fit the kind's table (late, duplicate or misdirected).",
    ["reason", "actor"],
)
