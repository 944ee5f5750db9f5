"""`Idempotency-Key` on the routes that create: a client that retries a create with the same key and body gets
the first answer again instead of a second creation.

As Stripe's idempotent requests and the IETF draft "The Idempotency-Key HTTP Header Field"
(draft-ietf-httpapi-idempotency-key-header) describe it: the key is the client's (up to 255 visible ASCII
characters, a UUID v4 is the advice), kept per organization for MDMQ_IDEMPOTENCY_KEY_TTL_S (24 h); the request
is fingerprinted (method, path and body, byte for byte); the same key with another fingerprint is refused with
422 (4022); a retry while the first request is still at work gets 409 (4009) with `Retry-After`. Only a
success is kept: a refusal created nothing, and the key is free for a corrected retry.

A route takes it in one parameter, `once: Annotated[Once, idempotent("permission")]`, and keeps its answer
with `once.keep(session, answer)` in the transaction of its work (or `once.answered(answer)` when the work
may run twice harmlessly). The work and its answer commit together: a key without an answer stands for work
that never committed, and a retry after the holder's lock (MDMQ_IDEMPOTENCY_LOCK_S) may run it again.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.auth import Caller, OrganizationId
from api.errors import CONFLICT, IDEMPOTENCY_KEY_REUSED, ApiError, ErrorEnvelope
from models.database import Session
from models.store.idempotency import ClaimLost, KeyState, NewClaim, claim_key, keep_answer, release_key
from models.types import utcnow
from workers.app import App

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"  # Stripe's name: the answer is the one the key's first request got
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="The client's key of this create (a UUID v4): a retry with the same key and body gets "
        "the first answer again (`Idempotent-Replayed: true`); another body, 422 (4022); while the first "
        "is at work, 409 (4009). Kept 24 hours.",
    ),
]
# Documented on the routes that take a key: what it may answer besides the route's own.
RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorEnvelope, "description": "A request with this Idempotency-Key is in progress (4009)"},
    422: {"model": ErrorEnvelope, "description": "Idempotency key reused with another body (4022)"},
}


@dataclass
class Once:
    """This request's hold on its `Idempotency-Key`, or nothing to keep when it sent none."""

    app: App
    claim: NewClaim | None
    status: int
    kept: bool = field(default=False)

    def keep(self, session: Session, answer: dict[str, Any]) -> dict[str, Any]:
        """Keep `answer` in `session`'s transaction (the work's own); returns it. `ClaimLost` (a retry took
        the key after this request's lock ran out) when the key is no longer this request's: its work must
        not commit."""
        if self.claim is not None:
            keep_answer(session, claim=self.claim, status=self.status, answer=answer)
            self.kept = True
        return answer

    def answered(self, answer: dict[str, Any]) -> dict[str, Any]:
        """`keep` in a transaction of its own, for work that may run twice harmlessly (an upsert)."""
        if self.claim is not None:
            with self.app.session() as session:
                self.keep(session, answer)
        return answer


class Replayed(Exception):
    """A retry of a request that succeeded: its first answer, answered again."""

    def __init__(self, status: int, answer: dict[str, Any]) -> None:
        self.status, self.answer = status, answer
        super().__init__(status)


def idempotent(permission: str) -> Any:
    """The dependency of a creating route that requires `permission`: claims the request's key, answers a
    retry from the key, and gives the key up when the route fails or keeps nothing."""

    async def once(
        request: Request, organizationId: OrganizationId, caller: Caller, key: IdempotencyKey = None
    ) -> AsyncIterator[Once]:
        caller.require(organizationId, permission)
        app: App = request.app.state.mdmq
        status = int(getattr(request.scope.get("route"), "status_code", None) or 200)
        if key is None:
            yield Once(app, None, status)
            return
        claim = NewClaim(
            organizationId, key, _fingerprint(request, await request.body()), secrets.token_hex(16)
        )
        state = await run_in_threadpool(_claim, app, claim)
        if not state.claimed:
            raise _not_claimed(state)
        hold, failed = Once(app, claim, status), True
        try:
            yield hold
            failed = False
        except ClaimLost:
            raise _in_progress() from None
        finally:
            # A failure after `keep` may have rolled the answer back (a failed commit): the release deletes
            # only a key still without an answer, so it is asked for whenever the route failed.
            if failed or not hold.kept:
                await run_in_threadpool(_release, app, claim)

    return Depends(once, scope="function")


def install(api: FastAPI) -> None:
    """Answer a replay with the first answer, and the header that says so."""

    @api.exception_handler(Replayed)
    async def replayed(request: Request, replay: Replayed) -> JSONResponse:
        return JSONResponse(replay.answer, status_code=replay.status, headers={REPLAYED_HEADER: "true"})


def _fingerprint(request: Request, body: bytes) -> str:
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


def _claim(app: App, claim: NewClaim) -> KeyState:
    settings = app.settings
    with app.session() as session:
        return claim_key(
            session,
            claim=claim,
            now=utcnow(),
            lock_s=settings.idempotency_lock_s,
            keep_s=settings.idempotency_key_ttl_s,
        )


def _release(app: App, claim: NewClaim) -> None:
    with app.session() as session:
        release_key(session, claim=claim)


def _not_claimed(state: KeyState) -> Exception:
    if state.reused:
        return ApiError(IDEMPOTENCY_KEY_REUSED, f"the {HEADER} came first with another request body")
    if state.answer_status is not None and state.answer is not None:
        return Replayed(state.answer_status, state.answer)
    return _in_progress()


def _in_progress() -> ApiError:
    return ApiError(
        CONFLICT,
        f"a request with this {HEADER} is in progress; retry it with the same key",
        headers={"Retry-After": "1"},
    )
