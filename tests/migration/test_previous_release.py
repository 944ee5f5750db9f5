"""The previous release's worker code against a database the current code has migrated to head: during a
rolling deploy both run at once (models/migrations/README.md). The previous release is the commit recorded in
previous_release.txt, taken from this repository's history with `git archive`; its worker creates
deployments, pushes them through the emulators, records a device's reports and an operator's cancel; then the
current code reads what it wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from cli.main import app as cli
from config.settings import Settings
from models.database import create_engine
from models.enums import Platform
from models.migrations.runner import upgrade
from models.secrets import SEALED_PREFIX, KeyRing
from models.statuses import Status
from models.store import ensure_organization
from models.store.credentials import list_credentials
from models.store.devices import NewDevice, add_devices
from models.tables import Deployment, DeploymentEvent, PushReceipt
from sandbox import DeviceRegistry
from sandbox.credentials import register_credentials, store_credentials
from tests.services import new_postgres_database
from workers.app import App
from workers.services.credential_rows import credential_from_row

ORGANIZATION = "previous-release"  # the previous release's worker's

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORKER = HERE / "previous_release_worker.py"
READER = HERE / "previous_release_reader.py"
# The packages the previous release's worker imports; taking these alone keeps the extraction small.
PACKAGES = ("api", "cli", "config", "models", "sandbox", "scheduler", "workers")


def previous_release() -> str:
    return (HERE / "previous_release.txt").read_text().strip()


@pytest.fixture
def previous_tree(tmp_path: Path) -> Path:
    """The previous release's source tree, extracted from git history."""
    commit = previous_release()
    found = subprocess.run(
        ["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True, check=False
    )
    if found.returncode != 0:
        pytest.fail(
            f"the previous release's commit {commit} (tests/migration/previous_release.txt) is not in this "
            "clone: clone with full history (git fetch --unshallow)"
        )
    archive = tmp_path / "previous.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", commit, *PACKAGES], cwd=ROOT, stdout=out, check=True)
    tree = tmp_path / "previous"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


@pytest.fixture
def migrated() -> Iterator[str]:
    with new_postgres_database("mdmq_previous_release") as url:
        upgrade(url)  # the CURRENT code's migrations, to head
        yield url


def run_previous_release(
    tree: Path, database_url: str, workdir: Path, *, script: Path = WORKER, arguments: Sequence[str] = ()
) -> dict[str, object]:
    # The script runs from a directory of its own so that nothing but the previous tree provides mdmq's
    # packages: the script's directory comes first on sys.path, then PYTHONPATH, then the venv.
    copied = workdir / script.name
    shutil.copyfile(script, copied)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")}
    environment["PYTHONPATH"] = str(tree)
    done = subprocess.run(
        [sys.executable, str(copied), database_url, *arguments],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"the previous release's {script.stem} failed:\n{done.stderr[-4000:]}"
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_previous_releases_worker_works_against_the_migrated_database(
    previous_tree: Path, migrated: str, tmp_path: Path
) -> None:
    workdir = tmp_path / "run"
    workdir.mkdir()
    result = run_previous_release(previous_tree, migrated, workdir)

    modules = result["modules"]
    assert isinstance(modules, dict)
    assert {Path(m).resolve().is_relative_to(previous_tree) for m in modules.values()} == {True}, modules
    deployment_ids = result["deployments"]
    assert isinstance(deployment_ids, list)
    engine = create_engine(migrated)
    try:
        with Session(engine) as s:
            deployments = [s.get(Deployment, i) for i in deployment_ids]
            events = s.exec(
                select(DeploymentEvent).where(col(DeploymentEvent.deployment_id).in_(deployment_ids))
            ).all()
            receipts = s.exec(select(PushReceipt)).all()
    finally:
        engine.dispose()
    assert [d.status if d else None for d in deployments] == [
        Status.completed,
        Status.queued,
        Status.cancelled,
    ]
    assert all(d is not None and d.receipt_id is not None for d in deployments), "each was pushed"
    assert {r.id for r in receipts} == {d.receipt_id for d in deployments if d is not None}
    assert {(e.deployment_id, e.to_status) for e in events} >= {
        (deployment_ids[0], Status.completed),
        (deployment_ids[2], Status.cancelled),
    }


def test_during_the_rolling_deploy_the_previous_release_and_this_one_read_each_others_secrets(
    previous_tree: Path, migrated: str, tmp_path: Path
) -> None:
    """Expand: this release runs with a key and MDMQ_SECRET_PLAINTEXT_WRITES beside the previous release's
    worker; each reads what the other writes. Contract: once no old process is left, `mdmq secrets rotate`
    encrypts every row, and this release reads them all."""
    key = KeyRing.generate_key()
    rollout = App(Settings(database_url=migrated, secret_key=key, secret_plaintext_writes=True))
    registry = DeviceRegistry()
    material = register_credentials(registry)
    try:
        with ThreadPoolExecutor(1) as pool:
            workdir = tmp_path / "worker"
            workdir.mkdir()
            previous = pool.submit(run_previous_release, previous_tree, migrated, workdir)
            with rollout.session() as s:
                ensure_organization(s, organization_id="this-release")
                store_credentials(s, "this-release", material)
                add_devices(
                    s, organization_id="this-release", devices=[NewDevice(Platform.ios, "ab" * 32, "m-1")]
                )
            previous.result()
        with rollout.session() as s:
            written = list_credentials(s, organization_id="this-release")
            ours = {c.provider.value: credential_from_row(c).fingerprint for c in written}
            theirs = [credential_from_row(c) for c in list_credentials(s, organization_id=ORGANIZATION)]
    finally:
        rollout.close()
    workdir = tmp_path / "reader"
    workdir.mkdir()
    read = run_previous_release(previous_tree, migrated, workdir, script=READER, arguments=["this-release"])
    assert read == {"fingerprints": ours, "magics": ["m-1"]}, "the previous release reads this one's writes"
    assert set(ours) == {"apns", "fcm", "aosp"}
    assert len(theirs) == 3, "this release reads what the previous release wrote"

    environment = {"MDMQ_DATABASE_URL": migrated, "MDMQ_SECRET_KEY": key}
    rotated = CliRunner().invoke(cli, ["secrets", "rotate", "--json"], env=environment)

    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.output) == {
        "reencrypted": 8, "push_credential": 6, "device": 2, "undecryptable": 0
    }  # fmt: skip
    engine = create_engine(migrated, key_ring=KeyRing([key]))
    try:
        with engine.connect() as connection:
            stored = connection.execute(
                sa.text("SELECT secret FROM push_credential UNION ALL SELECT push_magic FROM device")
            ).scalars()
            assert all(value is None or value.startswith(SEALED_PREFIX) for value in stored)
        with Session(engine) as s:
            after = {
                (c.organization_id, c.provider.value): credential_from_row(c) for c in list_credentials(s)
            }
    finally:
        engine.dispose()
    assert len(after) == 6, "both releases' credentials, encrypted, read by this release"
