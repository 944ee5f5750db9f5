"""Production logs are one JSON object per line, with the structured fields passed in `extra`."""

from __future__ import annotations

import json
import logging

import pytest

from config.logging import JsonFormatter, TextFormatter, configure_logging


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
