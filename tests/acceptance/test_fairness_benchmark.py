"""The fairness benchmark at a tiny size: every scenario of `benchmarks.fairness`, through real `dramatiq`
worker processes, PostgreSQL, a Redis of the test's own and the emulators, and every deployment of every run
pushed, accepted at the emulators and timed. `python -m benchmarks.fairness` runs them at full size."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fairness import World, main
from tests.helpers import free_ports
from tests.services import OwnRedis

pytestmark = pytest.mark.timeout(600)

DEVICES_A = 600
DEVICES_B = 20
ITEMS, GROUP, IDLE_ITEMS = 3, 2, 1
PACED = 60
ORGS, DEVICES_EACH = 3, 100


@pytest.fixture(scope="module")
def results(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("fairness") / "fairness.json"
    with OwnRedis(free_ports(1)[0]) as server:
        code = main(
            [
                *("--devices-a", str(DEVICES_A), "--devices-b", str(DEVICES_B), "--runs", "1"),
                *("--urgent-items", str(ITEMS), "--urgent-group", str(GROUP)),
                *("--urgent-idle-items", str(IDLE_ITEMS), "--paced-devices", str(PACED)),
                *("--paced-on-bulk-lane", "--urgent-beside-paced"),
                *("--orgs", str(ORGS), "--devices-per-org", str(DEVICES_EACH), "--timeout-s", "180"),
                *("--redis", server.url, "--database-url", postgres_url, "--out", str(out)),
            ]
        )
    assert code == 0
    scenarios: dict[str, Any] = json.loads(Path(out).read_text())["scenarios"]
    return scenarios


def every_run(scenario: dict[str, Any]) -> list[dict[str, Any]]:
    runs = scenario["runs"]
    return [r for rs in runs.values() for r in rs] if isinstance(runs, dict) else list(runs)


@pytest.mark.parametrize("name", ["two-orgs", "urgent", "paced", "ten-orgs"])
def test_every_run_pushes_every_deployment_and_counts_its_cpu(results: dict[str, Any], name: str) -> None:
    runs = every_run(results[name])

    assert runs, "the scenario ran"
    for run in runs:
        # Complete: every device's push accepted at the emulators and every deployment recorded as pushed.
        assert run["complete"], run
        assert run["cpu_s_per_1000_pushes"]["workers"] > 0, run


def test_two_orgs_times_every_deployment_of_b_and_both_totals_of_a(results: dict[str, Any]) -> None:
    with_b, alone = results["two-orgs"]["runs"]["with_b"][0], results["two-orgs"]["runs"]["a_alone"][0]

    assert with_b["b_latency_s"]["n"] == DEVICES_B
    assert with_b["b_latency_s"]["missing"] == 0
    assert 0 < with_b["b_latency_s"]["p50"] <= with_b["b_latency_s"]["p99"] <= with_b["b_latency_s"]["max"]
    assert with_b["pushes"] >= DEVICES_A + DEVICES_B
    assert alone["pushes"] >= DEVICES_A
    assert with_b["a_total_s"] > 0
    assert alone["a_total_s"] > 0
    assert results["two-orgs"]["median"]["a_total_vs_alone"] > 0


def test_urgent_times_every_probe_from_its_create_to_sent_and_accepted(results: dict[str, Any]) -> None:
    run = results["urgent"]["runs"][0]

    for phase, items in (("idle", IDLE_ITEMS), ("during_rollout", ITEMS)):
        for kind, size in (("lock", 1), ("urgent_profile", GROUP), ("plain_profile", GROUP)):
            figures = run[phase][kind]
            assert figures["accepted_s"]["n"] == items * size, (phase, kind, figures)
            assert 0 < figures["sent_s"]["p50"] <= figures["accepted_s"]["max"], (phase, kind, figures)
    # Beside a paced organization's rollout, every push of it accepted too, no faster than its rate allows.
    assert results["urgent"]["paced_devices_beside"] == PACED
    assert run["c_every_push_accepted_s"] > 0
    assert 0 < run["c_most_sent_in_1_s"] <= PACED


def test_paced_reports_the_paced_organizations_rate_and_the_unpaced_total(results: dict[str, Any]) -> None:
    run = results["paced"]["runs"]["with_c"][0]

    assert run["c_wake_rate_per_s"] == 50
    assert 0 < run["c_most_pushes_in_1_s"] <= PACED
    assert run["c_every_push_accepted_s"] > 0
    # Every push's way from mdmq's send to the emulator's acceptance: after it, and never missing.
    assert run["c_accepted_after_sent_s"]["n"] == PACED
    assert run["c_accepted_after_sent_s"]["p50"] > 0
    assert run["fair_takes"] >= PACED // 2  # a chunk of 2 at 50/s: a take each at least
    assert run["p_total_s"] > 0
    assert results["paced"]["runs"]["p_alone"][0]["p_total_s"] > 0
    # The same paced rollout with its chunks on the bulk lane (the code before the paced lane), beside.
    [on_bulk] = results["paced"]["runs"]["with_c_on_bulk_lane"]
    assert 0 < on_bulk["c_most_sent_in_1_s"] <= PACED
    assert on_bulk["c_every_push_accepted_s"] > 0
    assert results["paced"]["median"]["with_c_on_bulk_lane"]["c_wake_rate_per_s"] == 50


def test_ten_orgs_reports_each_organizations_completion_waiting_and_while_created(
    results: dict[str, Any],
) -> None:
    for variant in ("waiting", "creating"):
        run = results["ten-orgs"]["runs"][variant][0]

        assert len(run["completion_s"]) == len(run["created_s"]) == ORGS, variant
        assert all(c > 0 for c in run["completion_s"]), variant
        assert min(run["completion_s"]) <= run["mean_s"] <= max(run["completion_s"]), variant
        assert run["max_deviation_pct"] >= 0, variant
        assert all(0 <= f < c for f, c in zip(run["first_accepted_s"], run["completion_s"], strict=True))
    waiting, creating = results["ten-orgs"]["runs"]["waiting"][0], results["ten-orgs"]["runs"]["creating"][0]
    # Waiting, every create returned before the workers were started; while creating, they were started
    # before the creates were released.
    assert max(waiting["created_s"]) <= waiting["workers_started_s"], waiting
    assert creating["workers_started_s"] < 0 < min(creating["created_s"]), creating


def test_the_emulators_run_at_the_niceness_asked_beside_the_benchmarks() -> None:
    world = World({"acme": 2}, latency_ms=1, nice=1)
    try:
        pid = world._process.pid
        assert pid is not None
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 1
        assert len(world.devices["acme"]) == 2
    finally:
        world.close()
