"""The deployment kinds, the seed status vocabulary, and one transition table per kind."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Kind(StrEnum):
    profile = "profile"
    app = "app"
    security_action = "security_action"
    message = "message"


class Status(StrEnum):
    """Every status an admin reads in the console, spelled exactly as the seed vocabulary spells it.

    Security actions write `In Progress` where the other kinds write `In progress`: two members, because the
    console shows two spellings and the database stores what the console shows.
    """

    queued = "Queued"
    waiting = "Waiting"
    in_progress = "In progress"
    completed = "Completed"
    failed = "Failed"
    cancelled = "Cancelled"
    error_distributing = "Error distributing"
    postponed = "Postponed"
    waiting_for_startup = "Waiting for startup"
    # security actions
    action_in_progress = "In Progress"
    ready = "Ready"
    accepted_by_device = "Accepted By Device"
    # messages (Android)
    notification_created = "Notification created"
    user_acknowledged = "User acknowledged"


S = Status
Table = Mapping[Status, frozenset[Status]]


def _table(edges: dict[Status, set[Status]]) -> Table:
    return {source: frozenset(targets) for source, targets in edges.items()}


# from → the statuses a deployment may move to. A move not listed here is refused: it changes nothing.
# Device reports may skip a phase (a lost `fetched` report must not strand a Completed profile), but never go
# back; only the scheduler returns Postponed / Waiting for startup to Queued, and only an ops retry reopens a
# terminal status (see OPS_RETRY_FROM).
_PROFILE_OR_APP = _table(
    {
        S.queued: {
            S.waiting,
            S.in_progress,
            S.completed,
            S.failed,
            S.cancelled,
            S.error_distributing,
            S.postponed,
            S.waiting_for_startup,
        },
        S.waiting: {S.in_progress, S.completed, S.failed, S.postponed, S.waiting_for_startup},
        S.in_progress: {S.completed, S.failed, S.postponed},
        # The device came back on its own before the sweep re-queued it: it may fetch and finish the work.
        S.postponed: {S.queued, S.waiting, S.in_progress, S.completed, S.failed, S.cancelled},
        S.waiting_for_startup: {
            S.queued,
            S.waiting,
            S.in_progress,
            S.completed,
            S.failed,
            S.cancelled,
            S.postponed,
        },
        S.error_distributing: {S.cancelled},
        S.completed: set(),
        S.failed: set(),
        S.cancelled: set(),
    }
)

_SECURITY_ACTION = _table(
    {
        S.queued: {S.action_in_progress, S.accepted_by_device, S.ready, S.failed, S.cancelled},
        S.action_in_progress: {S.accepted_by_device, S.ready, S.failed},
        # Accepted, not yet done: a lock reports Ready after; a wipe may never report again (stuck detection).
        S.accepted_by_device: {S.ready, S.failed},
        S.ready: set(),
        S.failed: set(),
        S.cancelled: set(),
    }
)

_MESSAGE = _table(
    {
        S.queued: {S.in_progress, S.notification_created, S.user_acknowledged, S.failed, S.cancelled},
        S.in_progress: {S.notification_created, S.user_acknowledged, S.failed},
        S.notification_created: {S.user_acknowledged},
        S.user_acknowledged: set(),
        S.failed: set(),
        S.cancelled: set(),
    }
)

TRANSITIONS: Mapping[Kind, Table] = {
    Kind.profile: _PROFILE_OR_APP,
    Kind.app: _PROFILE_OR_APP,
    Kind.security_action: _SECURITY_ACTION,
    Kind.message: _MESSAGE,
}

STATUSES: Mapping[Kind, frozenset[Status]] = {kind: frozenset(table) for kind, table in TRANSITIONS.items()}

# Statuses that only an explicit ops retry leaves (back to Queued). Cancelled is final: cancel means cancel.
OPS_RETRY_FROM: Mapping[Kind, frozenset[Status]] = {
    Kind.profile: frozenset({S.failed, S.error_distributing}),
    Kind.app: frozenset({S.failed, S.error_distributing}),
    Kind.security_action: frozenset({S.failed}),
    Kind.message: frozenset({S.failed}),
}

# Declared, not derived from the tables, so that a table that lets one of these go somewhere fails its tests.
# `Error distributing` may still be cancelled (DESIGN §4.8); nothing else leaves these but an ops retry.
TERMINAL: Mapping[Kind, frozenset[Status]] = {
    Kind.profile: frozenset({S.completed, S.failed, S.cancelled, S.error_distributing}),
    Kind.app: frozenset({S.completed, S.failed, S.cancelled, S.error_distributing}),
    Kind.security_action: frozenset({S.ready, S.failed, S.cancelled}),
    Kind.message: frozenset({S.user_acknowledged, S.failed, S.cancelled}),
}

# Statuses from which the device has not started the work: cancel is allowed (DESIGN §4.8).
CANCELLABLE: Mapping[Kind, frozenset[Status]] = {
    kind: frozenset(source for source, targets in table.items() if S.cancelled in targets)
    for kind, table in TRANSITIONS.items()
}

# The status a permanent push failure leaves: kinds without `Error distributing` fail outright.
PUSH_UNDELIVERABLE: Mapping[Kind, Status] = {
    Kind.profile: S.error_distributing,
    Kind.app: S.error_distributing,
    Kind.security_action: S.failed,
    Kind.message: S.failed,
}

# Where the device is at work on it; stuck detection watches these (plus Queued).
IN_FLIGHT: Mapping[Kind, frozenset[Status]] = {
    Kind.profile: frozenset({S.waiting, S.in_progress}),
    Kind.app: frozenset({S.waiting, S.in_progress}),
    Kind.security_action: frozenset({S.action_in_progress, S.accepted_by_device}),
    Kind.message: frozenset({S.in_progress}),
}


def allowed_sources(kind: Kind, target: Status) -> frozenset[Status]:
    """The statuses of `kind` from which a deployment may move to `target` (ops retries excluded)."""
    return frozenset(source for source, targets in TRANSITIONS[kind].items() if target in targets)


def may_move(kind: Kind, source: Status, target: Status) -> bool:
    return target in TRANSITIONS[kind].get(source, frozenset())
