"""The retry policy: when a postponed deployment is tried again, and when it has had enough chances; and
the lane a dispatch message travels on.

Limits are per kind (a wipe cannot wait three days; a profile can) and an organization may override any of
them in `Organization.retry_policy`, e.g. `{"profile": {"max_postpones": 20, "deadline_s": 604800}}`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from config.errors import MdmqError
from models.statuses import Kind

_DAY = 86_400


@dataclass(frozen=True, kw_only=True)
class KindPolicy:
    max_postpones: int  # the NotNow / agent-not-started report that makes this many fails the deployment
    deadline_s: float  # from creation; past it an unfinished deployment fails
    postpone_first_s: float  # first wait after a postponement; doubles each time
    postpone_max_s: float
    max_pushes: int  # wake-up pushes without a check-in before the deployment fails
    push_first_s: float  # first wait before a re-push or a transient provider failure is retried
    push_max_s: float


# Profiles and apps: a rollout that may wait for a device for days.
_ROLLOUT = KindPolicy(
    max_postpones=12,
    deadline_s=3 * _DAY,
    postpone_first_s=300,
    postpone_max_s=4 * 3600,
    max_pushes=8,
    push_first_s=600,
    push_max_s=6 * 3600,
)
DEFAULTS: Mapping[Kind, KindPolicy] = {
    Kind.profile: _ROLLOUT,
    Kind.app: _ROLLOUT,
    # A lock or wipe of a lost phone is retried fast and given up early: the admin must know soon.
    Kind.security_action: KindPolicy(
        max_postpones=0,
        deadline_s=1 * _DAY,
        postpone_first_s=60,
        postpone_max_s=600,
        max_pushes=12,
        push_first_s=60,
        push_max_s=1800,
    ),
    Kind.message: KindPolicy(
        max_postpones=0,
        deadline_s=7 * _DAY,
        postpone_first_s=300,
        postpone_max_s=3600,
        max_pushes=6,
        push_first_s=900,
        push_max_s=6 * 3600,
    ),
}


class Lane(StrEnum):
    """The two queues of dispatch messages (DESIGN §4.7): workers serve `urgent` before `bulk`."""

    urgent = "urgent"
    bulk = "bulk"


def lanes(deployments: Iterable[tuple[str, str, Kind, bool]]) -> list[tuple[str, Lane, list[str]]]:
    """Deployments `(id, organization, kind, urgent)` grouped by organization, each group with its lane: the
    one place a dispatch message's lane is chosen. An organization's security actions and the deployments
    created `urgent` go on the urgent lane, and so does its lone other deployment (a single-device request);
    a rollout goes on the bulk lane."""
    groups: dict[tuple[str, bool], list[str]] = defaultdict(list)
    for deployment_id, organization_id, kind, urgent in deployments:
        groups[(organization_id, urgent or kind is Kind.security_action)].append(deployment_id)
    return [
        (organization_id, Lane.urgent if urgent or len(ids) == 1 else Lane.bulk, ids)
        for (organization_id, urgent), ids in groups.items()
    ]


class InvalidPolicy(MdmqError, ValueError):
    """An organization's retry policy override is not valid."""


@dataclass(frozen=True)
class RetryPolicy:
    kinds: Mapping[Kind, KindPolicy]

    @classmethod
    def defaults(cls) -> RetryPolicy:
        return cls(DEFAULTS)

    def overridden(self, overrides: Mapping[str, Any] | None) -> RetryPolicy:
        """This policy with an organization's overrides applied; unknown kinds or fields are an error."""
        if not overrides:
            return self
        kinds = dict(self.kinds)
        for kind_name, changes in overrides.items():
            kind = _kind(kind_name)
            kinds[kind] = _apply(kinds[kind], changes, kind_name)
        return RetryPolicy(kinds)

    def __getitem__(self, kind: Kind) -> KindPolicy:
        return self.kinds[kind]


class Policies:
    """The policy of each organization: the process's policy with the organization's overrides applied."""

    def __init__(self, base: RetryPolicy, overrides: Mapping[str, Mapping[str, Any] | None]) -> None:
        self._by_organization = {org: base.overridden(changes) for org, changes in overrides.items()}
        self._base = base

    def limits(self, organization_id: str, kind: Kind) -> KindPolicy:
        return self._by_organization.get(organization_id, self._base)[kind]


def backoff_s(attempt: int, first_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential back-off with full jitter over the upper half: attempt 1 waits about `first_s`."""
    ceiling: float = min(max_s, first_s * 2 ** max(attempt - 1, 0))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


def next_attempt_at(
    policy: KindPolicy,
    *,
    postpones: int,
    created_at: datetime,
    now: datetime,
    rng: random.Random | None = None,
) -> datetime | None:
    """When to try a deployment postponed `postpones` times, or None when it has had enough chances."""
    if postpones >= policy.max_postpones:
        return None
    at = now + timedelta(seconds=backoff_s(postpones, policy.postpone_first_s, policy.postpone_max_s, rng))
    deadline = created_at + timedelta(seconds=policy.deadline_s)
    return at if at < deadline else None


def _kind(name: str) -> Kind:
    try:
        return Kind(name)
    except ValueError:
        raise InvalidPolicy(
            f"unknown kind {name!r} in retry policy; expected one of {', '.join(Kind)}"
        ) from None


def _apply(policy: KindPolicy, changes: Any, kind_name: str) -> KindPolicy:
    known = {f.name for f in fields(KindPolicy)}
    if not isinstance(changes, Mapping) or not set(changes) <= known:
        raise InvalidPolicy(f"retry policy for {kind_name!r} may set only: {', '.join(sorted(known))}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in changes.values()):
        raise InvalidPolicy(f"retry policy values for {kind_name!r} must be numbers >= 0")
    counts = {"max_postpones", "max_pushes"} & set(changes)
    if any(not isinstance(changes[name], int) for name in counts):
        raise InvalidPolicy(f"max_postpones and max_pushes for {kind_name!r} must be whole numbers")
    return replace(policy, **changes)
