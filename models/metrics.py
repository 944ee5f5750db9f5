"""The metrics the store emits where transitions happen."""

from __future__ import annotations

from prometheus_client import Counter

from models.statuses import STATUSES

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

for _kind, _statuses in STATUSES.items():  # a series at 0 for each, so that the first shows in rate()
    for _status in _statuses:
        TRANSITIONS.labels(kind=_kind.value, status=_status.value)
