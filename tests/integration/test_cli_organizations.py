"""`mdmq orgs show|set` through the real entry point on PostgreSQL: what they change and print, and their
exit codes; a bad value changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.store import ensure_organization
from models.store.audit import audit_events
from models.store.organizations import (
    UnknownOrganization,
    fair_share_of,
    organization_exists,
    set_fair_share,
)
from tests.helpers import mdmq_json


@pytest.fixture
def mdmq(postgres_url: str) -> Any:
    return mdmq_json(postgres_url)


def test_set_changes_the_rate_and_weight_and_show_reads_them(mdmq: Any, pg: Engine) -> None:
    with Session(pg) as s, s.begin():
        ensure_organization(s, organization_id="acme")

    code, out, _ = mdmq("orgs", "set", "--org", "acme", "--wake-rate", "50", "--weight", "2", "--json")
    assert (code, out) == (0, {"organizationId": "acme", "wakeRatePerS": 50.0, "fairWeight": 2})
    code, out, _ = mdmq("orgs", "set", "--org", "acme", "--unpaced")
    assert code == 0
    assert "unpaced, bulk weight 2" in out
    code, out, _ = mdmq("orgs", "show", "--org", "acme", "--json")
    assert (code, out) == (0, {"organizationId": "acme", "wakeRatePerS": None, "fairWeight": 2})


@pytest.mark.parametrize(
    "args",
    [
        ("--wake-rate", "0"),
        ("--wake-rate", "-1"),
        ("--wake-rate", "1e-300"),
        ("--wake-rate", "0.09"),
        ("--wake-rate", "100001"),
        ("--wake-rate", "inf"),
        ("--weight", "0"),
        ("--weight", "101"),
        ("--wake-rate", "5", "--unpaced"),
        (),
    ],
)
def test_a_bad_value_is_a_usage_error_that_changes_nothing(
    mdmq: Any, pg: Engine, args: tuple[str, ...]
) -> None:
    with Session(pg) as s, s.begin():
        ensure_organization(s, organization_id="acme")

    code, _, err = mdmq("orgs", "set", "--org", "acme", *args)

    assert code == 64, err
    assert err.startswith("mdmq: ")
    with Session(pg) as s:
        share = fair_share_of(s, organization_id="acme")
    assert (share.weight, share.wake_rate_per_s) == (1, None)


def test_show_of_an_unknown_organization_exits_1(mdmq: Any, pg: Engine) -> None:
    code, _, err = mdmq("orgs", "show", "--org", "nobody")
    assert code == 1
    assert "no organization nobody" in err


def test_set_of_an_unknown_organization_exits_1_and_creates_nothing(mdmq: Any, pg: Engine) -> None:
    code, _, err = mdmq("orgs", "set", "--org", "nobody", "--wake-rate", "5", "--weight", "2")

    assert code == 1, err
    assert "no organization nobody" in err
    with Session(pg) as s:
        assert not organization_exists(s, organization_id="nobody")
        assert audit_events(s, organization_id="nobody", action="settings.changed") == []


def test_the_store_never_creates_an_organization_for_a_setting(pg: Engine) -> None:
    with Session(pg) as s, s.begin(), pytest.raises(UnknownOrganization, match="no organization nobody"):
        set_fair_share(s, organization_id="nobody", weight=2)
    with Session(pg) as s:
        assert not organization_exists(s, organization_id="nobody")
