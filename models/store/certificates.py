"""Watched certificate rows: PEM files and TLS endpoints whose expiry the certificate watch follows."""

from __future__ import annotations

from collections.abc import Iterable

from sqlmodel import Session, col, select

from models.enums import CertificateSource
from models.tables import WatchedCertificate


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
    """The watched certificate `certificate_id`, or None if it is gone. Changes made to it are written when
    the transaction commits."""
    return session.get(WatchedCertificate, certificate_id)
