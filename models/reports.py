"""The device-report vocabulary of the MDM check-in server, and what each report means for each kind."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from config.errors import MdmqError
from models.statuses import Kind, Status


class Report(StrEnum):
    fetched = "fetched"
    processing = "processing"
    acknowledged = "acknowledged"
    error = "error"
    not_now = "not_now"
    agent_not_started = "agent_not_started"
    accepted = "accepted"
    notification_shown = "notification_shown"
    user_acknowledged = "user_acknowledged"


# Apple's raw MDM result statuses, accepted as they come from the check-in server.
ALIASES: Mapping[str, Report] = {
    "Acknowledged": Report.acknowledged,
    "Error": Report.error,
    "CommandFormatError": Report.error,
    "NotNow": Report.not_now,
}

_PROFILE_OR_APP: Mapping[Report, Status] = {
    Report.fetched: Status.waiting,
    Report.processing: Status.in_progress,
    Report.acknowledged: Status.completed,
    Report.error: Status.failed,
    Report.not_now: Status.postponed,
    Report.agent_not_started: Status.waiting_for_startup,
}

# A report absent from a kind's map does not apply to that kind: it is refused like a transition that does
# not fit (security actions and messages cannot be postponed; only Android messages show notifications).
TARGETS: Mapping[Kind, Mapping[Report, Status]] = {
    Kind.profile: _PROFILE_OR_APP,
    Kind.app: _PROFILE_OR_APP,
    Kind.security_action: {
        Report.fetched: Status.action_in_progress,
        Report.processing: Status.action_in_progress,
        Report.accepted: Status.accepted_by_device,
        Report.acknowledged: Status.ready,
        Report.error: Status.failed,
    },
    Kind.message: {
        Report.fetched: Status.in_progress,
        Report.processing: Status.in_progress,
        Report.notification_shown: Status.notification_created,
        Report.acknowledged: Status.notification_created,
        Report.user_acknowledged: Status.user_acknowledged,
        Report.error: Status.failed,
    },
}


class UnknownReport(MdmqError, ValueError):
    """The device report is not one of mdmq's vocabulary nor an Apple alias."""


def parse_report(raw: str) -> Report:
    """`"NotNow"` or `"not_now"` → `Report.not_now`; anything else raises `UnknownReport`."""
    if raw in ALIASES:
        return ALIASES[raw]
    try:
        return Report(raw)
    except ValueError:
        known = ", ".join([*Report, *ALIASES])
        raise UnknownReport(f"unknown device report {raw!r}; expected one of: {known}") from None


def targets_for(report: Report) -> Mapping[Kind, Status]:
    """The status `report` moves a deployment to, per kind it applies to."""
    return {kind: targets[report] for kind, targets in TARGETS.items() if report in targets}
