"""The way out of a hold: one push, tried on a schedule, releases an organization whose problem was fixed
elsewhere (the APNs key in the Firebase console, a host's clock, an IAM role), as a new credential does."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from config.settings import Settings
from models.secrets import CANNOT_DECRYPT, CannotDecrypt, Undecryptable
from models.store.audit import record_audit_event
from models.store.dispatch import push_credential
from models.store.holds import (
    due_probes,
    probe_device,
    probe_failed,
    release_provider,
    still_held,
)
from models.tables import ProviderHold
from scheduler.lease import still_leading
from workers.actors import Actors
from workers.providers.base import Outcome, ProviderError
from workers.providers.credentials import InvalidCredential
from workers.services.credential_rows import credential_from_row
from workers.services.dispatch import wake_up

log = logging.getLogger(__name__)

PROBES_PER_RUN = 100
# Answers that only a working credential and configuration get: the hold's cause is gone.
_WORKING = frozenset({Outcome.accepted, Outcome.permanent})


@dataclass(frozen=True)
class Probe:
    """What one push for a held organization found: `released` when it went through."""

    released: bool
    result: str


def probe_holds_job(actors: Actors, now: datetime) -> int:
    """Try one push for each hold whose time came; returns how many holds it released."""
    app = actors.app
    with app.session() as s:
        due = due_probes(s, now=now, limit=PROBES_PER_RUN)
    released = 0
    for hold in due:
        if not still_leading():
            break
        probe = _probe(actors, hold)
        if probe.released:
            released += _release(actors, hold, probe, now)
        else:
            wait_s = backoff_s(hold.probe_failures + 1, app.settings)
            with app.session() as s:
                probe_failed(
                    s,
                    organization_id=hold.organization_id,
                    provider=hold.provider,
                    result=probe.result,
                    next_probe_at=now + timedelta(seconds=wait_s),
                    now=now,
                )
            log.info(
                "held %s %s still refused: %s; next try in %.0f s",
                hold.organization_id,
                hold.provider.value,
                probe.result,
                wait_s,
            )
    return released


def backoff_s(failures: int, settings: Settings) -> float:
    """The wait after the `failures`-th failed try: the first try's wait, doubled each time, at most
    `hold_probe_max_s` (an hour by default)."""
    return float(min(settings.hold_probe_first_s * 2 ** max(failures, 0), settings.hold_probe_max_s))


def _probe(actors: Actors, hold: ProviderHold) -> Probe:
    app = actors.app
    with app.session() as s:
        row = push_credential(s, organization_id=hold.organization_id, provider=hold.provider)
        topic = row.topic if row is not None else None
        device = probe_device(s, organization_id=hold.organization_id, provider=hold.provider, topic=topic)
    if row is None:
        return Probe(False, "no credential stored")
    if device is None:
        return Probe(False, "no device with a valid token to try")
    try:
        if isinstance(device.push_magic, Undecryptable):
            raise CannotDecrypt()
        credential = credential_from_row(row)
        [result] = app.gateway.send(hold.organization_id, credential, [wake_up(device)])
    except InvalidCredential as e:
        return Probe(False, f"credential unusable: {e}")
    except CannotDecrypt:
        return Probe(False, CANNOT_DECRYPT)
    except (ProviderError, TimeoutError) as e:
        return Probe(False, type(e).__name__)
    return Probe(result.outcome in _WORKING, result.reason or result.outcome.value)


def _release(actors: Actors, hold: ProviderHold, probe: Probe, now: datetime) -> int:
    with actors.app.session() as s:
        # Released, or released and held again, while the probe was out: this try says nothing of it.
        if not still_held(s, hold=hold, organization_id=hold.organization_id, provider=hold.provider):
            return 0
        ids = release_provider(s, organization_id=hold.organization_id, provider=hold.provider, now=now)
        record_audit_event(
            s,
            organization_id=hold.organization_id,
            actor="scheduler",
            action="hold.released",
            detail={"provider": hold.provider.value, "by": "probe", "reason": hold.reason, "held": len(ids)},
        )
    actors.enqueue_ids(ids)
    log.warning(
        "released %s %s: one push went through (%s); %d deployments enqueued",
        hold.organization_id,
        hold.provider.value,
        probe.result,
        len(ids),
    )
    return 1
