"""Provider holds, the credentials' answer windows, and the record of invalidated device tokens.

A hold stops an organization's pushes through one provider when an answer was the organization's (its
credential or configuration), not a device's. Its row says why, and when the scheduler tries one push again.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel, col, select

from models.enums import CredentialStatus, Provider, TokenState
from models.statuses import Status
from models.store._sql import DEPLOYMENT, DEVICE, dialect_of, one_of, run
from models.store.dispatch import PushTarget, release_holds
from models.tables import ProviderHold
from models.types import utcnow

WINDOW = SQLModel.metadata.tables["push_answer_window"]
DEAD = SQLModel.metadata.tables["push_dead_answer"]
HOLD = SQLModel.metadata.tables["provider_hold"]
CREDENTIAL = SQLModel.metadata.tables["push_credential"]

# One character per answer in a credential's window.
ANSWER_ALIVE = "a"  # accepted, or an answer only a live credential gets (410 Unregistered)
ANSWER_DEAD = "d"  # a dead-token answer, which a misconfigured credential gets for every device


# -- the answer window -----------------------------------------------------------------------------------


def record_answers(session: Session, *, fingerprint: str, answers: str, keep: int) -> str:
    """Append `answers` to the credential's window and keep its last `keep`; returns the window, oldest
    first. One statement, so that concurrent workers each add theirs: run it in a short transaction."""
    if not answers:
        return ""
    params = {"b_fingerprint": fingerprint, "b_answers": answers, "b_keep": keep, "b_now": utcnow()}
    return str(run(session, _record_answers(dialect_of(session)), params).scalar_one())


@functools.cache
def _record_answers(dialect: str) -> sa.Insert:
    """`record_answers`' statement for `dialect`, built once: a dispatch runs it for every group it sends."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    answers = sa.bindparam("b_answers", type_=sa.String)
    keep = sa.bindparam("b_keep", type_=sa.Integer)
    now = sa.bindparam("b_now", type_=WINDOW.c.updated_at.type)
    return (
        insert(WINDOW)
        .values(
            fingerprint=sa.bindparam("b_fingerprint", type_=sa.String),
            answers=_last(answers, keep, dialect),
            updated_at=now,
        )
        .on_conflict_do_update(
            index_elements=[WINDOW.c.fingerprint],
            set_={"answers": _last(WINDOW.c.answers + answers, keep, dialect), "updated_at": now},
        )
        .returning(WINDOW.c.answers)
    )


def answer_window(session: Session, *, fingerprint: str) -> str:
    """The credential's window as it stands ("" when it has none)."""
    statement = sa.select(WINDOW.c.answers).where(WINDOW.c.fingerprint == fingerprint)
    return str(run(session, statement).scalar_one_or_none() or "")


def first_dead_answers(
    session: Session, *, fingerprint: str, device_ids: Collection[str], now: datetime
) -> set[str]:
    """Of the devices that just got a dead-token answer through this credential, those the window does not
    count yet, now remembered as counted. One statement: of two workers that push the same device at once,
    one counts it."""
    if not device_ids:
        return set()
    insert = postgresql.insert if dialect_of(session) == "postgresql" else sqlite.insert
    statement = (
        insert(DEAD)
        .values([{"fingerprint": fingerprint, "device_id": d, "at": now} for d in sorted(set(device_ids))])
        .on_conflict_do_nothing(index_elements=[DEAD.c.fingerprint, DEAD.c.device_id])
        .returning(DEAD.c.device_id)
    )
    return set(run(session, statement).scalars())


def purge_dead_answers(session: Session, *, before: datetime) -> int:
    """Forget the dead-token answers counted before `before` (the retention purge); returns how many."""
    return int(run(session, sa.delete(DEAD).where(DEAD.c.at < before)).rowcount)


def _last(
    value: str | sa.ColumnElement[str], keep: int | sa.ColumnElement[int], dialect: str
) -> sa.ColumnElement[str]:
    text = sa.cast(value, sa.String) if isinstance(value, str) else value
    if dialect == "postgresql":
        return sa.func.right(text, keep)
    return sa.func.substr(text, -keep)


def devices_served(session: Session, *, organization_id: str, provider: Provider, at_most: int) -> int:
    """How many of the organization's devices this provider wakes, counted up to `at_most`."""
    some = (
        sa.select(DEVICE.c.id)
        .where(
            DEVICE.c.organization_id == organization_id,
            DEVICE.c.provider == provider.value,
            DEVICE.c.unenrolled_at.is_(None),
        )
        .limit(at_most)
        .subquery()
    )
    return int(run(session, sa.select(sa.func.count()).select_from(some)).scalar_one())


def answers_to_come(session: Session, *, organization_id: str, provider: Provider, fingerprint: str) -> bool:
    """May another of the organization's devices that this provider wakes still add an answer to the
    credential's window? One that will be pushed again: a valid token, a deployment Queued and not held (a
    push answered and awaiting its check-in counts: a silent device is pushed again), and no dead-token
    answer the window counts already (its next would not count). A device whose answer never reached the
    window (its worker was killed in between) and that checked in since has nothing Queued: it adds nothing.
    One statement, stopping at the first such device."""
    d = DEVICE.c
    waiting = sa.exists().where(
        DEPLOYMENT.c.device_id == d.id,
        DEPLOYMENT.c.status == Status.queued.value,
        DEPLOYMENT.c.hold_reason.is_(None),
    )
    counted = sa.exists().where(DEAD.c.fingerprint == fingerprint, DEAD.c.device_id == d.id)
    statement = (
        sa.select(d.id)
        .where(
            d.organization_id == organization_id,
            d.provider == provider.value,
            d.unenrolled_at.is_(None),
            d.token_state == TokenState.valid.value,
            waiting,
            ~counted,
        )
        .limit(1)
    )
    return run(session, statement).first() is not None


# -- holds -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewHold:
    organization_id: str
    provider: Provider
    scope: str  # the Outcome that held it: "credential" or "config"
    reason: str
    provider_reason: str | None
    fingerprint: str | None


def provider_holds(
    session: Session, *, organization_ids: Collection[str]
) -> dict[tuple[str, Provider], ProviderHold]:
    rows = session.exec(_HOLDS, params={"b_organizations": list(organization_ids)})
    return {(row.organization_id, row.provider): row for row in rows}


# Built once: a dispatch reads it for every chunk.
_HOLDS = select(ProviderHold).where(
    col(ProviderHold.organization_id).in_(sa.bindparam("b_organizations", expanding=True))
)


def hold_provider(session: Session, *, hold: NewHold, probe_at: datetime, now: datetime) -> None:
    """Record the hold (a new reason replaces the old one; the probe schedule of a standing hold stays)."""
    existing = session.get(ProviderHold, (hold.organization_id, hold.provider))
    if existing is None:
        session.add(
            ProviderHold(
                organization_id=hold.organization_id,
                provider=hold.provider,
                scope=hold.scope,
                reason=hold.reason,
                provider_reason=hold.provider_reason,
                fingerprint=hold.fingerprint,
                held_at=now,
                probe_at=probe_at,
            )
        )
    else:
        existing.scope, existing.reason = hold.scope, hold.reason
        existing.provider_reason, existing.fingerprint = hold.provider_reason, hold.fingerprint
        session.add(existing)
    session.flush()


def release_provider(
    session: Session, *, organization_id: str, provider: Provider, now: datetime | None = None
) -> list[str]:
    """End the organization's hold for `provider`: its row goes, the credential it was recorded with is valid
    again if it was marked invalid or revoked (a push went through, or an operator says it will), and the
    held deployments are released; returns their ids for the caller to enqueue."""
    hold = session.get(ProviderHold, (organization_id, provider), with_for_update=True)
    if hold is not None:
        if hold.fingerprint is not None:
            run(
                session,
                sa.update(CREDENTIAL)
                .where(
                    CREDENTIAL.c.organization_id == organization_id,
                    CREDENTIAL.c.provider == provider.value,
                    CREDENTIAL.c.fingerprint == hold.fingerprint,
                    CREDENTIAL.c.status.in_([CredentialStatus.invalid.value, CredentialStatus.revoked.value]),
                )
                .values(status=CredentialStatus.valid.value, status_reason=None),
            )
        session.delete(hold)
        session.flush()
    return release_holds(session, organization_id=organization_id, provider=provider, now=now)


def still_held(session: Session, *, hold: ProviderHold, organization_id: str, provider: Provider) -> bool:
    """Is the hold read earlier (`hold`) still standing, and the same one (not released and held again)?
    Locks its row till the end of the transaction: a release waits for what the caller does on the answer."""
    statement = (
        sa.select(HOLD.c.held_at)
        .where(HOLD.c.organization_id == organization_id, HOLD.c.provider == provider.value)
        .with_for_update()
    )
    held_at = run(session, statement).scalar_one_or_none()
    return held_at is not None and held_at == hold.held_at


def due_probes(session: Session, *, now: datetime, limit: int) -> list[ProviderHold]:
    statement = (
        select(ProviderHold)
        .where(col(ProviderHold.probe_at).is_not(None), col(ProviderHold.probe_at) <= now)
        .order_by(col(ProviderHold.probe_at))
        .limit(limit)
    )
    return list(session.exec(statement))


def probe_failed(
    session: Session,
    *,
    organization_id: str,
    provider: Provider,
    result: str,
    next_probe_at: datetime,
    now: datetime,
) -> None:
    hold = session.get(ProviderHold, (organization_id, provider))
    if hold is None:  # released meanwhile
        return
    hold.probe_failures += 1
    hold.last_probe_at, hold.last_probe_result, hold.probe_at = now, result[:500], next_probe_at
    session.add(hold)
    session.flush()


def probe_device(
    session: Session, *, organization_id: str, provider: Provider, topic: str | None = None
) -> PushTarget | None:
    """A device to try one push to: the most recently seen of the organization's enrolled ones with a valid
    token, and of `topic` when given (a device of another topic would answer `DeviceTokenNotForTopic`)."""
    c = DEVICE.c
    of_topic = sa.true() if topic is None else sa.or_(c.topic.is_(None), c.topic == topic)
    statement = (
        sa.select(c.id, c.push_token, c.push_magic, c.topic)
        .where(
            c.organization_id == organization_id,
            c.provider == provider.value,
            c.token_state == TokenState.valid.value,
            c.unenrolled_at.is_(None),
            of_topic,
        )
        .order_by(c.last_seen_at.desc().nulls_last(), c.id)
        .limit(1)
    )
    row = run(session, statement).first()
    if row is None:
        return None
    return PushTarget(row.id, provider, row.push_token, row.push_magic, True, row.topic)


# -- invalidated tokens ----------------------------------------------------------------------------------


def restore_tokens(
    session: Session,
    *,
    organization_id: str,
    provider: Provider | None = None,
    since: datetime | None = None,
    fingerprint: str | None = None,
    ambiguous_only: bool = False,
    device_ids: Sequence[str] | None = None,
) -> int:
    """Make the organization's invalidated tokens valid again; returns how many. Optionally only those of one
    provider, invalidated at or after `since`, seen with the credential of `fingerprint`, invalidated by
    an ambiguous answer, or of the devices `device_ids` (a token update)."""
    c = DEVICE.c
    where = [c.organization_id == organization_id, c.token_state == TokenState.invalid.value]
    if device_ids is not None:
        where.append(one_of(session, c.id, sorted(set(device_ids))))
    if provider is not None:
        where.append(c.provider == provider.value)
    if since is not None:
        where.append(c.token_invalid_at >= since)
    if fingerprint is not None:
        where.append(c.token_invalid_fingerprint == fingerprint)
    if ambiguous_only:
        where.append(c.token_invalid_ambiguous.is_(True))
    # A restored token's next dead-token answer counts again.
    run(session, sa.delete(DEAD).where(DEAD.c.device_id.in_(sa.select(c.id).where(*where))))
    statement = (
        sa.update(DEVICE)
        .where(*where)
        .values(
            token_state=TokenState.valid.value,
            token_invalid_reason=None,
            token_invalid_at=None,
            token_invalid_status=None,
            token_invalid_fingerprint=None,
            token_invalid_ambiguous=False,
        )
    )
    return int(run(session, statement).rowcount)


# -- what is held ---------------------------------------------------------------------------------------


def held_providers(session: Session) -> Sequence[ProviderHold]:
    """Every hold, by organization and provider."""
    statement = select(ProviderHold).order_by(col(ProviderHold.organization_id), col(ProviderHold.provider))
    return list(session.exec(statement))
