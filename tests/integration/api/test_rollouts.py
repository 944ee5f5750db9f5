"""Rollouts over real HTTP on PostgreSQL: a rollout's counts, push state, rate and ETA; the list newest first
with its real total; cancel and retry of a whole rollout; another organization's as missing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from api.rollouts import RolloutOut
from models.ids import new_id
from models.statuses import Kind, Status
from models.store import ensure_organization
from models.store.tokens import create_token
from models.tables import Deployment
from models.types import utcnow
from tests.conftest import MakeRollout
from tests.helpers import force_status, status_of
from tests.integration.api.conftest import Client
from tests.integration.api.test_deployments import get, post
from workers.app import App
from workers.broker import BULK_QUEUE, URGENT_QUEUE

DEPLOYMENT = Deployment.__table__  # type: ignore[attr-defined]
EVERYTHING = ["mdm.deployment.get", "mdm.deployment.cancel", "mdm.deployment.retry"]


@pytest.fixture
def tokens(mdmq: App, make_rollout: MakeRollout) -> dict[str, str]:
    with mdmq.session() as s:
        for org in ("acme", "other-org"):
            ensure_organization(s, organization_id=org)
        return {
            "acme": create_token(s, organization_id="acme", permissions=EVERYTHING)[1],
            "read_only": create_token(s, organization_id="acme", permissions=["mdm.deployment.get"])[1],
        }


def _set(engine: Engine, deployment_id: str, **values: Any) -> None:
    with engine.begin() as connection:
        connection.execute(sa.update(DEPLOYMENT).where(DEPLOYMENT.c.id == deployment_id).values(**values))


def test_a_rollout_shows_counts_push_state_rate_and_eta(
    client: Client, mdmq: App, make_rollout: MakeRollout, tokens: dict[str, str]
) -> None:
    rollout_id, ids = make_rollout(mdmq.engine, Kind.profile, count=7)
    done, woken, held, held_too, held_else, again, fresh = ids
    now = utcnow()
    _set(mdmq.engine, done, status="Completed", pushed_at=now - timedelta(hours=1), attempt_count=1)
    _set(mdmq.engine, woken, pushed_at=now - timedelta(seconds=30), attempt_count=1, enqueued_at=now)
    _set(mdmq.engine, woken, enqueued_at=now - timedelta(minutes=1))
    for i in (held, held_too):
        _set(mdmq.engine, i, hold_reason="APNs certificate expired")
    _set(mdmq.engine, held_else, hold_reason="No APNs push certificate")
    _set(mdmq.engine, again, attempt_count=1, pushed_at=None)  # turned away after a push that counted

    status, answer = get(client, f"/v1/organizations/acme/rollouts/{rollout_id}", tokens["read_only"])

    assert status == 200, answer
    data = answer["data"]
    assert set(data) == set(RolloutOut.model_fields)
    assert (data["id"], data["organizationId"], data["kind"], data["total"]) == (
        rollout_id,
        "acme",
        "profile",
        7,
    )
    assert data["counts"] == {"Queued": 6, "Completed": 1}
    assert (data["finished"], data["done"]) == (1, False)
    assert data["push"] == {
        "neverPushed": 1,
        "pushed": 2,
        "retrying": 1,
        "held": 3,
        "heldReasons": [
            {"reason": "APNs certificate expired", "count": 2},
            {"reason": "No APNs push certificate", "count": 1},
        ],
    }
    assert data["firstPushAt"] < data["lastPushAt"]
    # One push in the last minute, the first an hour ago: 1 per 60 s; two left to push (fresh, again).
    assert data["ratePerSecond"] == round(1 / 60, 2)
    assert data["etaSeconds"] == 120
    assert fresh not in (done, woken)


def test_a_rollout_before_its_first_push_has_no_rate_nor_eta_and_a_finished_one_is_done(
    client: Client, mdmq: App, make_rollout: MakeRollout, tokens: dict[str, str]
) -> None:
    rollout_id, ids = make_rollout(mdmq.engine, Kind.message, count=2)
    path = f"/v1/organizations/acme/rollouts/{rollout_id}"

    data = get(client, path, tokens["acme"])[1]["data"]
    assert (data["ratePerSecond"], data["etaSeconds"], data["firstPushAt"]) == (None, None, None)
    assert data["push"]["neverPushed"] == 2

    for i in ids:
        _set(mdmq.engine, i, status="User acknowledged", pushed_at=utcnow(), attempt_count=1)
    data = get(client, path, tokens["acme"])[1]["data"]
    assert (data["done"], data["finished"], data["etaSeconds"]) == (True, 2, 0)
    assert data["counts"] == {"User acknowledged": 2}


def test_another_organizations_rollout_is_missing_and_the_permission_is_required(
    client: Client, mdmq: App, make_rollout: MakeRollout, tokens: dict[str, str]
) -> None:
    theirs, _ = make_rollout(mdmq.engine, Kind.profile, organization_id="other-org")
    not_found = {"status": False, "error": {"code": 3001, "message": "Entity not found"}}

    for rollout_id in (theirs, new_id()):
        assert get(client, f"/v1/organizations/acme/rollouts/{rollout_id}", tokens["acme"]) == (
            404,
            not_found,
        )
        assert post(client, f"/v1/organizations/acme/rollouts/{rollout_id}/cancel", tokens["acme"], {}) == (
            404,
            not_found,
        )
    assert get(client, f"/v1/organizations/other-org/rollouts/{theirs}", tokens["acme"])[0] == 404
    assert get(client, "/v1/organizations/acme/rollouts/not-an-id", tokens["acme"])[0] == 400
    assert post(client, f"/v1/organizations/acme/rollouts/{theirs}/retry", tokens["read_only"], {})[0] == 403
    assert status_of(mdmq.engine, _first_of(mdmq, theirs)) is Status.queued


def test_the_list_is_newest_first_in_pages_with_the_real_total(
    client: Client, mdmq: App, make_rollout: MakeRollout, tokens: dict[str, str]
) -> None:
    made = [make_rollout(mdmq.engine, Kind.app, count=n)[0] for n in (1, 2, 3)]
    path = "/v1/organizations/acme/rollouts"

    status, first = get(client, f"{path}?limit=2", tokens["read_only"])
    assert status == 200
    assert [r["id"] for r in first["data"]["items"]] == made[::-1][:2]
    assert [r["total"] for r in first["data"]["items"]] == [3, 2]
    assert first["data"]["total"] == 3, "every page together, not this page's size"
    _, second = get(client, f"{path}?limit=2&cursor={first['data']['next']}", tokens["read_only"])
    assert ([r["id"] for r in second["data"]["items"]], second["data"]["next"]) == ([made[0]], None)
    assert second["data"]["total"] == 3


def test_cancel_and_retry_a_whole_rollout(
    client: Client, mdmq: App, make_rollout: MakeRollout, tokens: dict[str, str]
) -> None:
    rollout_id, ids = make_rollout(mdmq.engine, Kind.profile, count=4)
    queued, started, failed, undeliverable = ids
    force_status(mdmq.engine, started, Status.in_progress)
    force_status(mdmq.engine, failed, Status.failed)
    force_status(mdmq.engine, undeliverable, Status.error_distributing)
    path = f"/v1/organizations/acme/rollouts/{rollout_id}"

    status, answer = post(client, f"{path}/retry", tokens["acme"], {})
    assert status == 200, answer
    assert (sorted(answer["data"]["applied"]), answer["data"]["refused"]) == (
        sorted([failed, undeliverable]),
        [],
    )
    broker = mdmq.broker
    assert len(broker.queues[URGENT_QUEUE].queue) + len(broker.queues[BULK_QUEUE].queue) >= 1, "enqueued"

    status, answer = post(client, f"{path}/cancel", tokens["acme"], {})
    assert status == 200
    assert sorted(answer["data"]["applied"]) == sorted([queued, failed, undeliverable])
    assert answer["data"]["refused"] == [], "the started one is not selected"
    assert [status_of(mdmq.engine, i) for i in ids] == [
        Status.cancelled,
        Status.in_progress,
        Status.cancelled,
        Status.cancelled,
    ]
    assert post(client, f"{path}/cancel", tokens["acme"], {}) == (
        200,
        {"status": True, "data": {"applied": [], "refused": []}},
    )


def _first_of(mdmq: App, rollout_id: str) -> str:
    with mdmq.session() as s:
        return str(
            s.connection()
            .execute(sa.select(DEPLOYMENT.c.id).where(DEPLOYMENT.c.rollout_id == rollout_id))
            .scalar()
        )
