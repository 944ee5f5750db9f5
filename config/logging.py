"""Logging: one JSON object per line in production, readable text in development.

What a line is about travels with it: code that works on deployments wraps its work in `log_context(action=…,
organization=…, provider=…, deployment_id=…)`, and every line written inside carries those fields, whichever
module writes it. Fields passed with `extra=` win over the context's.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

# Attributes every LogRecord has; anything else was passed in `extra=` and belongs in the JSON line.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}
# Libraries whose INFO lines say nothing an operator acts on, once per job run or per start.
_QUIETER = {"apscheduler": logging.WARNING, "alembic.runtime.plugins": logging.WARNING}


_CONTEXT: ContextVar[dict[str, Any]] = ContextVar("mdmq_log_context", default={})  # noqa: B039 (never mutated)
IDS_PER_LINE = 20  # a chunk's lines name its first deployments and count them all


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every line logged inside (on this thread or task) carries `fields`; None values are left out."""
    token = _CONTEXT.set(_CONTEXT.get() | {k: v for k, v in fields.items() if v is not None})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def ids_field(ids: Sequence[str]) -> dict[str, Any]:
    """The context fields for many deployments: their count, and the first `IDS_PER_LINE` ids."""
    if len(ids) == 1:
        return {"deployment_id": ids[0]}
    return {"deployments": len(ids), "deployment_ids": list(ids[:IDS_PER_LINE])}


class WithContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _CONTEXT.get().items():
            record.__dict__.setdefault(key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= {key: value for key, value in record.__dict__.items() if key not in _STANDARD}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = {key: value for key, value in record.__dict__.items() if key not in _STANDARD}
        return f"{text} {' '.join(f'{k}={v}' for k, v in extra.items())}" if extra else text


def configure_logging(*, level: str = "INFO", json_lines: bool = False) -> None:
    """The process's one handler, on stderr; with `json_lines`, Python's warnings and a crash's traceback
    are lines of the log too, not text beside it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else TextFormatter("%(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(WithContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, quieter in _QUIETER.items():
        logging.getLogger(name).setLevel(max(quieter, root.level))
    if json_lines:
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    """An exception that ends the process, as one critical line with its traceback."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, trace)
        return
    logging.getLogger("mdmq").critical("uncaught %s: %s", kind.__name__, error, exc_info=(kind, error, trace))
