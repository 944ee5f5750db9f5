"""`mdmq rollouts create` through the real entry point on PostgreSQL: every enrolled device, or those of a
device file, as one rollout; the usage errors change nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from sandbox.operator_fleet import fleet_rows
from tests.helpers import run_mdmq

DEVICES = 12


@pytest.fixture
def mdmq(pg: Engine, postgres_url: str) -> Any:
    """`mdmq` on the emptied database."""

    def run(*args: str) -> tuple[int, Any, str]:
        result = run_mdmq(*args, env={"MDMQ_DATABASE_URL": postgres_url}, timeout_s=120)
        out = json.loads(result.stdout) if "--json" in args and result.returncode == 0 else result.stdout
        return result.returncode, out, result.stderr

    return run


@pytest.fixture
def fleet(tmp_path: Path, mdmq: Any) -> Path:
    path = tmp_path / "fleet.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in fleet_rows(devices=DEVICES, seed=5)))
    code, _, err = mdmq("devices", "import", str(path), "--org", "acme", "--json")
    assert code == 0, err
    return path


def test_all_makes_one_rollout_of_every_enrolled_device(fleet: Path, mdmq: Any) -> None:
    code, created, err = mdmq("rollouts", "create", "--org", "acme", "--kind", "app", "--all",
                              "--payload", '{"app": "com.example.notes"}', "--json")  # fmt: skip
    assert code == 0, err
    [rollout] = created["rollouts"]
    assert (rollout["total"], created["deployments"]) == (DEVICES, DEVICES)
    code, shown, _ = mdmq("rollouts", "show", rollout["id"], "--json")
    assert (code, shown["kind"], shown["total"]) == (0, "app", DEVICES)


def test_devices_takes_the_ids_of_a_device_file(fleet: Path, mdmq: Any, tmp_path: Path) -> None:
    two = tmp_path / "two.jsonl"
    two.write_text("".join(fleet.read_text().splitlines(keepends=True)[:2]))
    code, created, err = mdmq("rollouts", "create", "--org", "acme", "--kind", "security_action",
                              "--devices", str(two), "--urgent", "--json")  # fmt: skip
    assert code == 0, err
    assert [r["total"] for r in created["rollouts"]] == [2]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("--all", "--devices", "fleet"), 64),  # both
        ((), 64),  # neither
        (("--all", "--payload", "[1]"), 64),
        (("--all", "--payload", "{"), 64),
        (("--devices", "unknown"), 64),  # an id that is not the organization's device
    ],
)
def test_usage_errors_create_nothing(
    fleet: Path, mdmq: Any, tmp_path: Path, args: tuple[str, ...], code: int
) -> None:
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"id": "0" * 24}) + "\n")
    given = [str(fleet) if a == "fleet" else str(unknown) if a == "unknown" else a for a in args]
    answered, _, _ = mdmq("rollouts", "create", "--org", "acme", "--kind", "profile", *given)
    assert answered == code
    assert mdmq("rollouts", "--org", "acme", "--json")[0] == 1, "no rollout"


def test_an_organization_without_devices_exits_1(mdmq: Any) -> None:
    assert mdmq("rollouts", "create", "--org", "empty-org", "--kind", "profile", "--all")[0] == 1
