"""`mdmq demo`: a mixed rollout to simulated devices through the whole pipeline, on the configured stores.

The rollout and the emulators it runs against are the sandbox distribution's (`sandbox.rollout`), which a
production install does not have: this module imports it only when the command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import typer

from config.settings import Settings

if TYPE_CHECKING:
    from sandbox.rollout import DemoResult

__all__ = ["EXIT_NO_SANDBOX", "DemoResult", "run_demo", "without_sandbox"]  # DemoResult: for annotations

EXIT_NO_SANDBOX = 69  # sysexits' EX_UNAVAILABLE


def run_demo(
    settings: Settings, *, devices: int, seed: int, timeout_s: float, progress: Callable[[int, int], None]
) -> DemoResult:
    try:
        from sandbox.rollout import run_rollout
    except ModuleNotFoundError as e:
        without_sandbox("demo", e)
    return run_rollout(settings, devices=devices, seed=seed, timeout_s=timeout_s, progress=progress)


def without_sandbox(command: str, error: ModuleNotFoundError) -> NoReturn:
    """Exit 69 with a one-line message when what is missing is the sandbox distribution; else re-raise."""
    if error.name is None or error.name.partition(".")[0] != "sandbox":
        raise error
    typer.echo(
        f"mdmq {command} needs the sandbox distribution: pip install ./sandbox (./dev demo does it)", err=True
    )
    raise typer.Exit(EXIT_NO_SANDBOX)
