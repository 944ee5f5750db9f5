"""`mdmq demo` through its real entry point on the embedded default: a mixed rollout to simulated devices
ends with every deployment in the status its device dictates, and says so in its JSON and its exit code."""

from __future__ import annotations

import json
from pathlib import Path

from models.statuses import STATUSES, Kind
from tests.helpers import run_mdmq


def test_the_demo_rollout_ends_as_every_simulated_device_dictates(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'demo.db'}"

    result = run_mdmq(
        "demo", "--devices", "120", "--json", env={"MDMQ_DATABASE_URL": database}, timeout_s=280
    )

    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert summary["devices"] == 120
    assert summary["matched"] == summary["total"] > 240
    counts = summary["deployments"]
    assert set(counts) == {kind.value for kind in Kind}
    for kind, by_status in counts.items():
        assert {status for status in by_status} <= {s.value for s in STATUSES[Kind(kind)]}
    assert counts["profile"]["Completed"] > 0
    assert counts["profile"].get("Error distributing", 0) > 0, "the unregistered tokens of the mix"
    messages = [example["error"] for example in summary["examples"]]
    assert any(m.startswith("APNs rejected the device token: Unregistered since") for m in messages) or any(
        "reported an error" in m for m in messages
    )

    again = run_mdmq("demo", "--devices", "40", "--json", env={"MDMQ_DATABASE_URL": database}, timeout_s=280)
    assert again.returncode == 0, "a second run on the same database: " + again.stdout + again.stderr
    assert json.loads(again.stdout)["ok"] is True
