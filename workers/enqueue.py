"""Hand deployments to the broker in chunks, after their transaction committed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta

from config.errors import MdmqError
from models.batches import IDS_PER_STATEMENT, chunked
from models.database import Session
from models.statuses import Kind
from models.store.sweeps import Due, mark_enqueued, unmark_enqueued
from models.types import utcnow
from workers.broker import BROKER_ERRORS
from workers.policy import Lane, lanes

Send = Callable[[list[str]], object]


class BrokerAway(MdmqError):
    """The broker did not take a dispatch message; the rows not sent are left for the relay."""


def enqueue_dispatch(
    session: Callable[[], AbstractContextManager[Session]],
    deployments: Iterable[Due],
    *,
    urgent: Send,
    bulk: Send,
    chunk_size: int,
    redeliver_after_s: float,
    marked: bool = False,
) -> int:
    """Send dispatch messages: chunks of one organization, security actions and single deployments on the
    urgent queue. Returns the number of messages.

    The rows are marked enqueued as their messages go out, unless they were created `marked` already. When
    a send fails (the broker is down), the rows are left saying which messages went: those sent are marked,
    those not are unmarked, for the relay to enqueue once the broker is back; then `BrokerAway` is raised
    (any other error as it is)."""
    chunks = [
        (urgent if lane is Lane.urgent else bulk, list(chunk))
        for _, lane, ids in lanes((d.id, d.organization_id, d.kind, d.urgent) for d in deployments)
        for chunk in chunked(ids, chunk_size)
    ]
    sent: list[str] = []
    for done, (send, chunk) in enumerate(chunks):
        try:
            send(chunk)
        except Exception as e:
            if marked:
                _unmark(session, [i for _, unsent in chunks[done:] for i in unsent])
            elif sent:
                _mark(session, sent, redeliver_after_s)
            if isinstance(e, BROKER_ERRORS):
                raise BrokerAway(f"{type(e).__name__}: {e}") from None
            raise
        if not marked:
            sent += chunk
            if len(sent) >= MARK_EVERY:
                _mark(session, sent, redeliver_after_s)
                sent = []
    if sent:
        _mark(session, sent, redeliver_after_s)
    return len(chunks)


# Marked a few thousand at a time, each in a transaction of its own, as their messages go out: a mark of a
# whole rollout in one transaction would hold its row locks until the last, and the workers recording the
# answers to the first chunks' pushes would wait for it.
MARK_EVERY = IDS_PER_STATEMENT


def _mark(
    session: Callable[[], AbstractContextManager[Session]], ids: list[str], redeliver_after_s: float
) -> None:
    with session() as s:
        now = utcnow()
        mark_enqueued(s, ids=ids, now=now, redeliver_at=now + timedelta(seconds=redeliver_after_s))


def _unmark(session: Callable[[], AbstractContextManager[Session]], ids: list[str]) -> None:
    with session() as s:
        unmark_enqueued(s, ids=ids)


def as_due(rows: Sequence[tuple[str, str, Kind, bool]]) -> list[Due]:
    """(id, organization, kind, urgent) as the sweeps return them, for freshly created deployments."""
    now = utcnow()
    return [Due(i, organization, kind, 0, now, urgent) for i, organization, kind, urgent in rows]
