"""The production install (`pip install .`, the Dockerfile's) holds mdmq's packages and no sandbox: the
emulators and the rollout harness are a distribution of their own (sandbox/pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = {"api", "cli", "config", "models", "scheduler", "workers"}
# What a checkout holds besides its sources: the wheel is built from a copy without them.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".tools", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "*.db*"
)


def _wheel(project: Path, into: Path) -> list[str]:
    """The file names in the wheel pip builds of `project` (in isolation, as `pip install` does)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(into), project],
        check=True,
        timeout=240,
    )
    (wheel,) = into.glob("*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_the_production_wheel_has_every_mdmq_package_and_no_sandbox(tmp_path: Path) -> None:
    # A copy, so that the build's own files (build/, *.egg-info) never land in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    names = _wheel(source, tmp_path / "wheel")
    assert not [name for name in names if name.startswith("sandbox/")]
    packages = {name.split("/")[0] for name in names if name.endswith("/__init__.py")}
    assert packages == PRODUCT
    assert {"cli/main.py", "models/migrations/script.py.mako"} <= set(names)


def test_the_sandbox_wheel_has_the_sandbox_package_alone(tmp_path: Path) -> None:
    source = tmp_path / "sandbox"
    shutil.copytree(ROOT / "sandbox", source, ignore=NOT_SOURCES)
    names = _wheel(source, tmp_path / "wheel")
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert packages == {"sandbox"}
    assert {"sandbox/__init__.py", "sandbox/rollout.py", "sandbox/py.typed"} <= set(names)
