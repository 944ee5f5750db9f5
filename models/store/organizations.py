"""Organizations: the tenants."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from config.errors import MdmqError
from models.ids import is_organization_id
from models.statuses import Status
from models.store._sql import DEPLOYMENT, run
from models.tables import Organization, ProviderHold


class InvalidOrganizationId(MdmqError, ValueError):
    """An organization id must be 24 hex characters or at least 3 letters, digits and dashes."""


def ensure_organization(session: Session, *, organization_id: str, name: str = "") -> Organization:
    """The organization `organization_id`, created if it does not exist yet."""
    if not is_organization_id(organization_id):
        raise InvalidOrganizationId(f"invalid organization id {organization_id!r}")
    organization = session.get(Organization, organization_id)
    if organization is None:
        organization = Organization(id=organization_id, name=name or organization_id)
        session.add(organization)
        session.flush()
    return organization


def lock_organization(session: Session, *, organization_id: str) -> None:
    """Holds the organization's row till the end of the transaction (FOR NO KEY UPDATE: rows that refer
    to it can still be written), so that writers of one of its rows that may not exist yet, such as its
    credential for a provider, take turns."""
    statement = select(Organization.id).where(Organization.id == organization_id)
    session.exec(statement.with_for_update(key_share=True)).first()


def retry_overrides(
    session: Session, *, organization_ids: Collection[str]
) -> dict[str, Mapping[str, Any] | None]:
    """Each organization's retry policy overrides (None: the defaults)."""
    rows = session.exec(_OVERRIDES, params={"b_organizations": list(organization_ids)})
    return {organization_id: overrides for organization_id, overrides in rows}


# Built once: a dispatch reads it for every chunk.
_OVERRIDES = select(Organization.id, Organization.retry_policy).where(
    col(Organization.id).in_(sa.bindparam("b_organizations", expanding=True))
)


def organization_exists(session: Session, *, organization_id: str) -> bool:
    return session.get(Organization, organization_id) is not None


def busiest_organizations(session: Session, *, limit: int) -> list[str]:
    """The `limit` organizations with the most Queued deployments (held ones included), most first, ties by
    id: the same answer in every process that asks at the same moment."""
    c = DEPLOYMENT.c
    n = sa.func.count().label("n")
    statement = (
        sa.select(c.organization_id, n)
        .where(c.status == Status.queued.value)
        .group_by(c.organization_id)
        .order_by(n.desc(), c.organization_id)
        .limit(limit)
    )
    return [r.organization_id for r in run(session, statement)]


@dataclass(frozen=True)
class DispatchLimits:
    """What keeps an organization's pushes back on purpose: a provider hold (any provider), or a wake-up
    rate (`Organization.wake_rate_per_s` set)."""

    held: bool
    paced: bool


def dispatch_limits(session: Session, *, organization_ids: Collection[str]) -> dict[str, DispatchLimits]:
    """Each of `organization_ids` that exists, and whether it is held or paced."""
    if not organization_ids:
        return {}
    ids = sorted(organization_ids)
    held = set(
        session.exec(select(ProviderHold.organization_id).where(col(ProviderHold.organization_id).in_(ids)))
    )
    rates = session.exec(
        select(Organization.id, Organization.wake_rate_per_s).where(col(Organization.id).in_(ids))
    )
    return {i: DispatchLimits(held=i in held, paced=rate is not None) for i, rate in rates}


def others_limited(session: Session, *, organization_ids: Collection[str]) -> DispatchLimits:
    """Whether any organization but `organization_ids` is held, and whether any is paced."""
    ids = sorted(organization_ids)
    held = select(ProviderHold.organization_id).where(col(ProviderHold.organization_id).not_in(ids))
    paced = select(Organization.id).where(
        col(Organization.wake_rate_per_s).is_not(None), col(Organization.id).not_in(ids)
    )
    return DispatchLimits(
        held=session.exec(held.limit(1)).first() is not None,
        paced=session.exec(paced.limit(1)).first() is not None,
    )


@dataclass(frozen=True)
class FairShare:
    """An organization's share of the bulk lane: its weight beside others, its wake-up rate (None: off)."""

    weight: int = 1
    wake_rate_per_s: float | None = None


def fair_shares(session: Session, *, organization_ids: Collection[str]) -> dict[str, FairShare]:
    """Each organization's weight and wake-up rate; an organization without a row has the defaults."""
    statement = select(Organization.id, Organization.fair_weight, Organization.wake_rate_per_s).where(
        col(Organization.id).in_(organization_ids)
    )
    found = {i: FairShare(weight or 1, rate) for i, weight, rate in session.exec(statement)}
    return {i: found.get(i, FairShare()) for i in organization_ids}


_UNCHANGED: Any = object()
MAX_FAIR_WEIGHT = 100


# A wake-up rate books each chunk's slot that far after the last, so it bounds how long a rollout lasts:
# below 0.1 per second (one push every 10 s) a 100,000-device rollout would take more than eleven days, and
# a rate such as 1e-300 books chunks centuries ahead, held in the fair queue for good. Above 100,000 per
# second it paces nothing: more than the whole pipeline pushes, and every chunk is full-sized then
# (`workers.fair.paced_chunk_size`). No pacing at all is None (`--unpaced`, null), not a huge rate.
MIN_WAKE_RATE_PER_S = 0.1
MAX_WAKE_RATE_PER_S = 100_000.0


class InvalidFairShare(MdmqError, ValueError):
    """A weight is a whole number from 1 to 100; a wake-up rate from 0.1 to 100,000 a second, or none."""


class UnknownOrganization(MdmqError, LookupError):
    """No such organization: its settings are neither read nor changed (nor is it created)."""


def check_fair_share(*, weight: object = None, wake_rate_per_s: object = None) -> None:
    """`InvalidFairShare` naming the value refused; None for either is allowed (the default)."""
    if weight is not None and (
        not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= MAX_FAIR_WEIGHT
    ):
        raise InvalidFairShare(f"weight must be a whole number from 1 to {MAX_FAIR_WEIGHT}, not {weight!r}")
    rate = wake_rate_per_s
    if rate is not None and (
        not isinstance(rate, int | float)
        or isinstance(rate, bool)
        or not MIN_WAKE_RATE_PER_S <= rate <= MAX_WAKE_RATE_PER_S
    ):
        raise InvalidFairShare(
            f"wake rate must be a number of pushes per second from {MIN_WAKE_RATE_PER_S:g} "
            f"to {MAX_WAKE_RATE_PER_S:,.0f}, not {rate!r}"
        )


def set_fair_share(
    session: Session,
    *,
    organization_id: str,
    weight: int | None = _UNCHANGED,
    wake_rate_per_s: float | None = _UNCHANGED,
) -> FairShare:
    """Change an organization's weight or wake-up rate (None: back to the default); what it has now. Chunks
    waiting keep their size and their booked slots; new ones are cut and booked at the new rate. Every take
    from then on is paced at the new rate (`workers.fair.catch_up_pace`, which counts the chunk's own size,
    so a second stays within 1.2 times the new rate), except that a chunk cut for the old rate and larger
    than 1.2 times the new goes whole: 5 at 50/s cut to 4/s is 5 in a second, once a chunk until those are
    gone. `UnknownOrganization` when it
    does not exist: a setting never creates one (a typo in its id would otherwise make a new organization;
    they are created with their first token, `mdmq token create --create-org`)."""
    check_fair_share(
        weight=None if weight is _UNCHANGED else weight,
        wake_rate_per_s=None if wake_rate_per_s is _UNCHANGED else wake_rate_per_s,
    )
    organization = session.get(Organization, organization_id)
    if organization is None:
        raise UnknownOrganization(f"no organization {organization_id}")
    if weight is not _UNCHANGED:
        organization.fair_weight = weight
    if wake_rate_per_s is not _UNCHANGED:
        organization.wake_rate_per_s = wake_rate_per_s
    session.add(organization)
    session.flush()
    return FairShare(organization.fair_weight or 1, organization.wake_rate_per_s)


def fair_share_of(session: Session, *, organization_id: str) -> FairShare:
    """The organization's weight and wake-up rate (the defaults when it has no row)."""
    return fair_shares(session, organization_ids=[organization_id])[organization_id]
