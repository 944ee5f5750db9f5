"""Watched certificate rows: PEM files and TLS endpoints whose expiry the certificate watch follows."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from models.enums import CertificateSource
from models.store._sql import run
from models.tables import WatchedCertificate, table_of

WATCHED = table_of(WatchedCertificate)


def watched_certificates(session: Session) -> list[WatchedCertificate]:
    """Every watched certificate, in the order they were added."""
    return list(session.exec(select(WatchedCertificate).order_by(col(WatchedCertificate.id))))


def watch_certificates(session: Session, *, targets: Iterable[tuple[CertificateSource, str]]) -> int:
    """Add those of `targets` not watched yet; returns how many were added."""
    known = {(w.source, w.target) for w in session.exec(select(WatchedCertificate))}
    added = 0
    for source, target in dict.fromkeys(targets):
        if (source, target) not in known:
            session.add(WatchedCertificate(source=source, target=target))
            added += 1
    return added


def watched_certificate(session: Session, *, certificate_id: int) -> WatchedCertificate | None:
    """The watched certificate `certificate_id`, or None if it is gone."""
    return session.get(WatchedCertificate, certificate_id)


def record_watched_check(
    session: Session,
    *,
    certificate_id: int,
    checked_at: datetime,
    not_after: datetime | None,
    last_error: str | None,
    alerted_days: int | None,
) -> None:
    """What the certificate watch found: the expiry, or why the certificate could not be read
    (`last_error`), and the last threshold alerted."""
    values = {
        "last_checked_at": checked_at,
        "not_after": not_after,
        "last_error": last_error,
        "alerted_days": alerted_days,
    }
    run(session, sa.update(WATCHED).where(WATCHED.c.id == certificate_id).values(values))
