"""Organizations: the tenants."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from sqlmodel import Session, col, select

from config.errors import MdmqError
from models.ids import is_organization_id
from models.tables import Organization


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
    statement = select(Organization.id, Organization.retry_policy).where(
        col(Organization.id).in_(organization_ids)
    )
    return {organization_id: overrides for organization_id, overrides in session.exec(statement)}


def organization_exists(session: Session, *, organization_id: str) -> bool:
    return session.get(Organization, organization_id) is not None
