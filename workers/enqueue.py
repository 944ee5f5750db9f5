"""Hand deployments to the broker in chunks, after their transaction committed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta

from config.errors import MdmqError
from models.batches import IDS_PER_STATEMENT, chunked
from models.database import Session
from models.statuses import Kind
from models.store.organizations import FairShare, fair_shares
from models.store.sweeps import Due, mark_enqueued, unmark_enqueued
from models.types import utcnow
from workers.broker import BROKER_ERRORS
from workers.fair import FairQueue, paced_chunk_size
from workers.policy import Lane, lanes

Send = Callable[[list[str]], object]
Token = Callable[[float], object]  # sends one bulk-lane token, delayed by so many seconds


class BrokerAway(MdmqError):
    """The broker did not take a dispatch message; the rows not sent are left for the relay."""


@dataclass(frozen=True)
class FairLane:
    """The bulk lane through the fair queue (`workers.fair`): each chunk put in its organization's turn,
    and a token sent for it, delayed to the chunk's booked time when its organization is paced."""

    queue: FairQueue
    token: Token


def enqueue_dispatch(
    session: Callable[[], AbstractContextManager[Session]],
    deployments: Iterable[Due],
    *,
    urgent: Send,
    bulk: Send,
    chunk_size: int,
    redeliver_after_s: float,
    marked: bool = False,
    fair: FairLane | None = None,
) -> int:
    """Send dispatch messages: chunks of one organization, security actions and single deployments on the
    urgent queue. Returns the number of messages. With `fair`, the bulk lane's chunks go into the fair
    queue, each with a token on the bulk queue (`bulk` is not used); without, as ids on the bulk queue.

    The rows are marked enqueued as their messages go out, unless they were created `marked` already. When
    a send fails (the broker is down), the rows are left saying which messages went: those sent are marked,
    those not are unmarked, for the relay to enqueue once the broker is back; then `BrokerAway` is raised
    (any other error as it is). A chunk in the fair queue counts as sent, token or not: any token takes
    it in turn, and the re-push sweep at its redelivery time should no token come."""
    grouped = lanes((d.id, d.organization_id, d.kind, d.urgent) for d in deployments)
    sends = _sends(session, grouped, urgent=urgent, bulk=bulk, chunk_size=chunk_size, fair=fair)
    sent: list[str] = []
    for done, (send, chunk) in enumerate(sends):
        try:
            send()
        except Exception as e:
            if marked:
                _unmark(session, [i for _, unsent in sends[done:] for i in unsent])
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
    if lost := next((send.lost for send, _ in sends if isinstance(send, _FairPut) and send.lost), None):
        raise BrokerAway(f"{type(lost).__name__}: {lost}") from None
    return sum(send.messages for send, _ in sends)


def _sends(
    session: Callable[[], AbstractContextManager[Session]],
    grouped: list[tuple[str, Lane, list[str]]],
    *,
    urgent: Send,
    bulk: Send,
    chunk_size: int,
    fair: FairLane | None,
) -> list[tuple[_Send, list[str]]]:
    """Each step of the enqueue, with the ids it sends: a message per chunk, or (fair) one put of an
    organization's bulk chunks with their tokens."""
    shares = {}
    if fair is not None:
        bulk_organizations = {o for o, lane, _ in grouped if lane is Lane.bulk}
        if bulk_organizations:
            with session() as s:
                shares = fair_shares(s, organization_ids=bulk_organizations)
    sends: list[tuple[_Send, list[str]]] = []
    for organization_id, lane, ids in grouped:
        if lane is Lane.urgent or fair is None:
            send = urgent if lane is Lane.urgent else bulk
            sends += [(_Message(send, list(chunk)), list(chunk)) for chunk in chunked(ids, chunk_size)]
            continue
        share = shares[organization_id]
        size = paced_chunk_size(chunk_size, share.wake_rate_per_s)
        chunks = [list(chunk) for chunk in chunked(ids, size)]
        sends.append((_FairPut(fair, organization_id, chunks, share), ids))
    return sends


class _Message:
    """One dispatch message with its ids."""

    def __init__(self, send: Send, ids: list[str]) -> None:
        self.send, self.ids, self.messages = send, ids, 1

    def __call__(self) -> None:
        self.send(self.ids)


class _FairPut:
    """An organization's bulk chunks into the fair queue, then a token each. Should a token not go (the
    broker away), the chunks stay put and count as sent; the error is raised once every put is done."""

    def __init__(
        self, fair: FairLane, organization_id: str, chunks: list[list[str]], share: FairShare
    ) -> None:
        self.fair, self.organization_id, self.chunks, self.share = fair, organization_id, chunks, share
        self.messages = len(chunks)
        self.lost: Exception | None = None

    def __call__(self) -> None:
        delays = self.fair.queue.put(
            self.organization_id,
            self.chunks,
            weight=self.share.weight,
            rate_per_s=self.share.wake_rate_per_s,
        )
        for sent, delay_s in enumerate(delays):
            try:
                self.fair.token(delay_s)
            except BROKER_ERRORS as e:
                self.lost, self.messages = e, sent
                return


_Send = _Message | _FairPut


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
