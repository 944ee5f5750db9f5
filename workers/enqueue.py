"""Hand deployments to the broker in chunks, after their transaction committed."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta

from config.errors import MdmqError
from models.batches import IDS_PER_STATEMENT, chunked
from models.database import Session
from models.statuses import Kind
from models.store.organizations import FairShare, fair_shares
from models.store.sweeps import Due, defer_redelivery, mark_enqueued, unmark_enqueued
from models.types import utcnow
from workers.broker import BROKER_ERRORS
from workers.fair import FairLaneName, FairQueue, paced_chunk_size
from workers.policy import Lane, lanes

Send = Callable[[list[str]], object]
Token = Callable[[float], object]  # sends one token of a fair lane, delayed by so many seconds


class BrokerAway(MdmqError):
    """The broker did not take a dispatch message; the rows not sent are left for the relay."""


@dataclass(frozen=True)
class FairLane:
    """A fair queue (`workers.fair`) and how its tokens are sent: each chunk put in its organization's
    turn, and a token sent for it, delayed to the chunk's booked time when its organization is paced."""

    queue: FairQueue
    token: Token


@dataclass(frozen=True)
class FairLanes:
    """Where an organization's bulk chunks go, chosen at their put (`workers.fair.FairLaneName`): to the
    `paced` lane when it is paced at up to `paced_max_rate` wake-ups a second, else to `bulk`."""

    bulk: FairLane
    paced: FairLane
    paced_max_rate: float

    def lane_of(self, organization_id: str, share: FairShare) -> FairLaneName:
        """The lane for the organization's chunks put now: by its rate; but paced now while its chunks
        still wait in the bulk lane (its rate lowered under the limit, or set), the bulk lane, where its
        new chunks are booked after its old ones, at the new rate. Each lane books an organization's slots
        apart: chunks in both go at both rates at once. Never the other way round: an organization no
        longer paced within the limit must not fill the urgent lane's few threads, so chunks it still has
        in the paced lane go on at their old rate beside the new ones, until they are taken."""
        rate = share.wake_rate_per_s
        if not rate or rate > self.paced_max_rate:
            return FairLaneName.bulk
        return FairLaneName.bulk if self.bulk.queue.waits(organization_id) else FairLaneName.paced

    def __getitem__(self, lane: FairLaneName) -> FairLane:
        return self.paced if lane is FairLaneName.paced else self.bulk


def enqueue_dispatch(
    session: Callable[[], AbstractContextManager[Session]],
    deployments: Iterable[Due],
    *,
    urgent: Send,
    bulk: Send,
    chunk_size: int,
    redeliver_after_s: float,
    marked: bool = False,
    fair: FairLanes | None = None,
) -> int:
    """Send dispatch messages: chunks of one organization, security actions and single deployments on the
    urgent queue. Returns the number of messages. With `fair`, the bulk lane's chunks go into a fair
    queue, the paced lane's or the bulk lane's (`FairLanes.lane_of`), each with a token of that lane (`bulk`
    is not used); without, as ids on the bulk queue.

    The rows are marked enqueued as their messages go out, unless they were created `marked` already. When
    a send fails (the broker is down), the rows are left saying which messages went: those sent are marked,
    those not are unmarked, for the relay to enqueue once the broker is back; then `BrokerAway` is raised
    (any other error as it is). A chunk in the fair queue counts as sent, token or not: any token takes
    it in turn, and the re-push sweep at its redelivery time should no token come. A chunk booked for
    later (a paced organization's) has that time counted from its slot: the sweep would otherwise send a
    second copy of every chunk still waiting its turn, and push the organization's pacing further again."""
    grouped = lanes((d.id, d.organization_id, d.kind, d.urgent) for d in deployments)
    sends = _sends(session, grouped, urgent=urgent, bulk=bulk, chunk_size=chunk_size, fair=fair)
    marks = _Marks(session, redeliver_after_s, mark=not marked)
    for done, (send, chunk) in enumerate(sends):
        try:
            send()
        except Exception as e:
            if marked:
                _unmark(session, [i for _, unsent in sends[done:] for i in unsent])
            marks.flush()
            if isinstance(e, BROKER_ERRORS):
                raise BrokerAway(f"{type(e).__name__}: {e}") from None
            raise
        marks.add(chunk, send.booked)
    marks.flush()
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
    fair: FairLanes | None,
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
        self.booked: list[tuple[list[str], float]] = []  # goes at once

    def __call__(self) -> None:
        self.send(self.ids)


class _FairPut:
    """An organization's bulk chunks into the fair queue of its lane, then a token each. The lane is chosen
    here, with the put: its store is the broker's, and away, it fails as a send does. Should a token not go
    (the broker away), the chunks stay put and count as sent; the error is raised once every put is done."""

    def __init__(
        self, lanes: FairLanes, organization_id: str, chunks: list[list[str]], share: FairShare
    ) -> None:
        self.lanes, self.organization_id, self.chunks, self.share = lanes, organization_id, chunks, share
        self.messages = len(chunks)
        self.lost: Exception | None = None
        self.booked: list[tuple[list[str], float]] = []  # (chunk, seconds to its slot), once put

    def __call__(self) -> None:
        fair = self.lanes[self.lanes.lane_of(self.organization_id, self.share)]
        delays = fair.queue.put(
            self.organization_id,
            self.chunks,
            weight=self.share.weight,
            rate_per_s=self.share.wake_rate_per_s,
        )
        self.booked = [(chunk, delay_s) for chunk, delay_s in zip(self.chunks, delays, strict=True)]
        for sent, delay_s in enumerate(delays):
            try:
                fair.token(delay_s)
            except BROKER_ERRORS as e:
                self.lost, self.messages = e, sent
                return


_Send = _Message | _FairPut


# Marked a few thousand at a time, each in a transaction of its own, as their messages go out: a mark of a
# whole rollout in one transaction would hold its row locks until the last, and the workers recording the
# answers to the first chunks' pushes would wait for it.
MARK_EVERY = IDS_PER_STATEMENT


# A chunk booked for later is re-pushed no sooner than its slot and then the redelivery time; the slot
# rounded up to a tenth of the redelivery time, so that a paced rollout's chunks, each booked a little after
# the last, are re-marked a group at a time (one statement per group, not per chunk), and no re-push comes
# more than a tenth of the redelivery time late.
REDELIVERY_STEP_SHARE = 0.1


class _Marks:
    """The ids sent, marked enqueued (`mark`: not created so) a few thousand at a time, and those booked for
    later given their later redelivery time, grouped by it."""

    def __init__(
        self, session: Callable[[], AbstractContextManager[Session]], redeliver_after_s: float, *, mark: bool
    ) -> None:
        self.session, self.redeliver_after_s, self.mark = session, redeliver_after_s, mark
        self.sent: list[str] = []
        self.later: dict[float, list[str]] = {}  # seconds from now to redelivery → ids booked for later
        self.step_s = redeliver_after_s * REDELIVERY_STEP_SHARE

    def add(self, ids: list[str], booked: list[tuple[list[str], float]]) -> None:
        if self.mark:
            self.sent += ids
        for chunk, delay_s in booked:
            if delay_s > 0:
                offset = self.redeliver_after_s + math.ceil(delay_s / self.step_s) * self.step_s
                self.later.setdefault(offset, []).extend(chunk)
        if len(self.sent) + sum(len(i) for i in self.later.values()) >= MARK_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.sent and not self.later:
            return
        with self.session() as s:
            now = utcnow()
            if self.sent:
                redeliver_at = now + timedelta(seconds=self.redeliver_after_s)
                mark_enqueued(s, ids=self.sent, now=now, redeliver_at=redeliver_at)
            for offset, ids in self.later.items():
                defer_redelivery(s, ids=ids, redeliver_at=now + timedelta(seconds=offset))
        self.sent, self.later = [], {}


def _unmark(session: Callable[[], AbstractContextManager[Session]], ids: list[str]) -> None:
    with session() as s:
        unmark_enqueued(s, ids=ids)


def as_due(rows: Sequence[tuple[str, str, Kind, bool]]) -> list[Due]:
    """(id, organization, kind, urgent) as the sweeps return them, for freshly created deployments."""
    now = utcnow()
    return [Due(i, organization, kind, 0, now, urgent) for i, organization, kind, urgent in rows]
