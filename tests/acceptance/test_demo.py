"""`mdmq demo` through its real entry point on the embedded default: a mixed rollout to simulated devices
ends with every deployment in the status its device dictates, and says so in its JSON and its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from models.statuses import STATUSES, Kind


def test_the_demo_rollout_ends_as_every_simulated_device_dictates(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")}
    environment["MDMQ_DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.db'}"
    command = [
        sys.executable,
        "-c",
        "from cli.main import main; main()",
        "demo",
        "--devices",
        "120",
        "--json",
    ]

    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=280, check=False
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
