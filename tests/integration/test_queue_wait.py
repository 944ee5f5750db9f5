"""The queue wait's `organization` label on SQLite and PostgreSQL: the K organizations with the most Queued
deployments by id, every other one as `other`, however many organizations push; the scheduler's held and
paced gauges name the same ones."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.engine import Engine
from sqlmodel import Session

from models.enums import Provider
from models.statuses import Kind
from models.store.dispatch import claim_for_push
from models.tables import Organization, ProviderHold
from models.types import utcnow
from scheduler import gauges
from tests.conftest import MakeDeployments
from tests.helpers import sessions
from workers.queue_wait import BUCKETS_S, OTHER, REFRESH_S, OrganizationLabels, observe_queue_wait

K = 3
ORGANIZATIONS = 9


def _organizations(engine: Engine, make_deployments: MakeDeployments) -> dict[str, list[str]]:
    """Nine organizations, `org-1` with one Queued deployment up to `org-9` with nine."""
    return {
        f"org-{n}": make_deployments(engine, Kind.profile, count=n, organization_id=f"org-{n}")
        for n in range(1, ORGANIZATIONS + 1)
    }


def _series(registry: CollectorRegistry) -> dict[str, float]:
    """The histogram's observations by organization label."""
    return {
        s.labels["organization"]: s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name.endswith("_count")
    }


def test_many_organizations_make_at_most_k_named_series_and_other(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    created = _organizations(engine, make_deployments)
    registry = CollectorRegistry()
    histogram = Histogram("wait_seconds", "", ["organization"], buckets=BUCKETS_S, registry=registry)
    labels = OrganizationLabels(k=K)
    now = utcnow()

    with Session(engine) as s, s.begin():
        claimed = claim_for_push(s, ids=sorted(i for ids in created.values() for i in ids), now=now)
    observed = observe_queue_wait(sessions(engine), claimed, now=now, labels=labels, histogram=histogram)

    assert observed == sum(range(1, ORGANIZATIONS + 1)), "every first push is observed"
    series = _series(registry)
    assert len(series) == K + 1
    assert series == {"org-9": 9, "org-8": 8, "org-7": 7, OTHER: sum(range(1, 7))}


# One worker process: claims the deployments it is given, as a dispatch does, and observes them into the
# queue wait histogram, in prometheus_client's multiprocess mode (the directory is in its environment).
_WORKER = """
import sys
from sqlmodel import Session
from models.database import create_engine
from models.store.dispatch import claim_for_push
from models.types import utcnow
from tests.helpers import sessions
from workers.queue_wait import OrganizationLabels, observe_queue_wait

url, k, *ids = sys.argv[1:]
engine = create_engine(url)
now = utcnow()
with Session(engine) as s, s.begin():
    claimed = claim_for_push(s, ids=ids, now=now)
print(observe_queue_wait(sessions(engine), claimed, now=now, labels=OrganizationLabels(k=int(k))))
"""


def test_two_worker_processes_together_export_k_named_series_and_other(
    pg: Engine, postgres_url: str, make_deployments: MakeDeployments, tmp_path: Path
) -> None:
    created = _organizations(pg, make_deployments)
    ids = sorted(i for each in created.values() for i in each)
    environment = os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parents[2]
    observed = 0
    for half in (ids[0::2], ids[1::2]):  # each process claims some of every organization's deployments
        done = subprocess.run(
            [sys.executable, "-c", _WORKER, postgres_url, str(K), *half],
            env=environment, cwd=root, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        observed += int(done.stdout)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]  # as the workers serve it

    assert len(list(tmp_path.glob("histogram_*.db"))) == 2, "one file per process"
    series = {
        s.labels["organization"]: s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == "mdmq_queue_wait_seconds_count"
    }
    assert observed == len(ids)
    assert series == {"org-9": 9, "org-8": 8, "org-7": 7, OTHER: sum(range(1, 7))}, "K+1, summed"


def test_the_ranking_is_read_once_a_window_and_ties_go_by_id(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    make_deployments(engine, Kind.profile, count=2, organization_id="zeta")
    make_deployments(engine, Kind.profile, count=2, organization_id="alpha")
    make_deployments(engine, Kind.profile, count=1, organization_id="beta")
    labels = OrganizationLabels(k=1)
    window = datetime.fromtimestamp(utcnow().timestamp() // REFRESH_S * REFRESH_S + 1, tz=UTC)

    labels.refresh(sessions(engine), now=window)
    assert labels.named == {"alpha"}, "two each: the first id"
    make_deployments(engine, Kind.profile, count=5, organization_id="beta")
    labels.refresh(sessions(engine), now=window + timedelta(seconds=REFRESH_S - 2))
    assert labels.named == {"alpha"}, "the same window: not read again"
    labels.refresh(sessions(engine), now=window + timedelta(seconds=REFRESH_S))
    assert labels.named == {"beta"}
    assert (labels.label("beta"), labels.label("alpha")) == ("beta", OTHER)


def test_the_scheduler_shows_held_and_paced_for_the_same_organizations_and_other(
    engine: Engine, make_deployments: MakeDeployments
) -> None:
    for n, organization in enumerate(("held", "paced", "plain", "quiet"), start=1):
        make_deployments(engine, Kind.profile, count=10 - n, organization_id=organization)
    _limit(engine, held=["held"], paced=["paced"])
    labels = OrganizationLabels(k=3)
    labels.refresh(sessions(engine), now=utcnow())

    with Session(engine) as s:
        gauges.show_dispatch_limits(gauges.named_limits(s, named=labels.named))

    expected = {"held": 1, "paced": 0, "plain": 0, OTHER: 0}
    assert _shown(gauges.ORGANIZATION_HELD) == expected
    assert set(_shown(gauges.ORGANIZATION_HELD)) - {OTHER} == labels.named, "the same rule as the workers'"
    assert _shown(gauges.ORGANIZATION_PACED) == {"held": 0, "paced": 1, "plain": 0, OTHER: 0}

    _limit(engine, held=["quiet"], paced=["quiet"])  # `other` is any organization the ranking leaves out
    with Session(engine) as s:
        gauges.show_dispatch_limits(gauges.named_limits(s, named=labels.named))
    assert (_shown(gauges.ORGANIZATION_HELD)[OTHER], _shown(gauges.ORGANIZATION_PACED)[OTHER]) == (1, 1)

    gauges.show_dispatch_limits({})
    assert _shown(gauges.ORGANIZATION_HELD) == {}, "an organization that left the ranking goes"


def _limit(engine: Engine, *, held: list[str], paced: list[str]) -> None:
    with Session(engine) as s, s.begin():
        for organization_id in held:
            s.add(
                ProviderHold(
                    organization_id=organization_id, provider=Provider.apns, scope="config", reason="r"
                )
            )
        for organization_id in paced:
            organization = s.get(Organization, organization_id)
            assert organization is not None
            organization.wake_rate_per_s = 50.0


def _shown(gauge: Gauge) -> dict[str, float]:
    return {s.labels["organization"]: s.value for m in gauge.collect() for s in m.samples}
