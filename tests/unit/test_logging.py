"""Production logs are one JSON object per line, with the structured fields passed in `extra`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from config.logging import (
    IDS_PER_LINE,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    ids_field,
    log_context,
)


@pytest.fixture(autouse=True)
def _hooks_restored() -> Iterator[None]:
    """configure_logging(json_lines=True) routes warnings and crashes to the log: not pytest's, after."""
    excepthook = sys.excepthook
    yield
    sys.excepthook = excepthook
    logging.captureWarnings(False)


def _record(**extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "mdmq.test", "levelname": "INFO", "msg": "pushed %d", "args": (3,)}
    )
    record.__dict__.update(extra)
    return record


def test_a_json_line_carries_the_message_and_the_extra_fields() -> None:
    line = JsonFormatter().format(_record(deployment_id="a" * 24, provider="apns"))

    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "pushed 3"
    assert parsed["level"] == "info"
    assert parsed["deployment_id"] == "a" * 24
    assert parsed["provider"] == "apns"


def test_text_lines_show_the_extra_fields_after_the_message() -> None:
    line = TextFormatter("%(levelname)s %(message)s").format(_record(organization="acme"))
    assert line == "INFO pushed 3 organization=acme"


def test_configure_logging_installs_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="DEBUG", json_lines=True)
    configure_logging(level="DEBUG", json_lines=True)
    logging.getLogger("mdmq.test").debug("hello", extra={"action": "dispatch"})

    [line] = capsys.readouterr().err.splitlines()
    assert json.loads(line)["action"] == "dispatch"


def test_lines_written_inside_a_log_context_carry_its_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="INFO", json_lines=True)
    log = logging.getLogger("mdmq.elsewhere")  # any module's logger: the context is not the logger's
    with log_context(action="dispatch", **ids_field([f"d{i:02}" for i in range(25)])):
        with log_context(organization="acme", provider="apns", ignored=None):
            log.info("held", extra={"provider": "fcm"})
        log.info("chunk done")
    log.info("outside")

    held, done, outside = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert (held["action"], held["organization"], held["provider"]) == ("dispatch", "acme", "fcm"), (
        "extra wins over the context"
    )
    assert held["deployments"] == 25
    assert held["deployment_ids"] == [f"d{i:02}" for i in range(IDS_PER_LINE)]
    assert "ignored" not in held
    assert "organization" not in done, "an inner context ends with its block"
    assert done["action"] == "dispatch"
    assert "action" not in outside


def test_one_deployment_is_named_by_its_id() -> None:
    assert ids_field(["d1"]) == {"deployment_id": "d1"}


def test_in_production_a_warning_and_a_crash_are_json_lines_too() -> None:
    program = (
        "import warnings; from config.logging import configure_logging; "
        "configure_logging(json_lines=True); warnings.warn('deprecated here'); raise RuntimeError('boom')"
    )
    ran = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )

    assert ran.returncode == 1
    lines = [json.loads(line) for line in ran.stderr.splitlines()]
    assert [(line["level"], line["logger"]) for line in lines] == [
        ("warning", "py.warnings"),
        ("critical", "mdmq"),
    ]
    assert "deprecated here" in lines[0]["message"]
    assert lines[1]["message"] == "uncaught RuntimeError: boom"
    assert "Traceback" in lines[1]["exception"]
