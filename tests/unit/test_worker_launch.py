"""`mdmq worker`'s environment reaches the `dramatiq` command it starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from config.settings import Settings
from workers.launch import worker_environment

# What the `dramatiq` command's Worker gets, built as the command builds it: with no timeout given.
_PRINT_WORKER_TIMEOUT = (
    "from dramatiq import Worker; from dramatiq.brokers.stub import StubBroker; "
    "print(Worker(StubBroker()).worker_timeout)"
)


def test_the_idle_poll_setting_is_the_worker_timeout_dramatiq_reads(tmp_path: Path) -> None:
    """Dramatiq's command has no option for it: only its environment sets how long an idle consumer sleeps."""
    settings = Settings(worker_poll_ms=300, metrics_dir=str(tmp_path))
    environment = worker_environment(settings, os.environ)

    read = subprocess.run(
        [sys.executable, "-c", _PRINT_WORKER_TIMEOUT],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )

    assert read.stdout.strip() == "300"
    assert Settings().worker_poll_ms == 250, "below Dramatiq's 1,000 ms"
