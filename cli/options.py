"""Option values the commands share: durations (`30d`, `12h`, `90m`) and `--since` times."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from cli.output import fail
from models.types import utcnow

EXIT_USAGE = 64
DURATION = re.compile(r"^([1-9][0-9]{0,5})([dhm])$")
UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_duration(value: str, option: str) -> timedelta:
    """`30d`, `12h` or `90m` as a timedelta; anything else is a usage error naming `option`."""
    match = DURATION.match(value.strip())
    if match is None:
        fail(f"{option} {value!r} is not a duration such as 30d, 12h or 90m", EXIT_USAGE)
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


def parse_since(value: str | None, option: str = "--since") -> datetime | None:
    """An ISO 8601 time with its UTC offset, or a duration back from now (`7d`, `12h`); None stays None."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return utcnow() - parse_duration(value, option)
    if at.tzinfo is None:
        fail(f"{option} {value!r} has no UTC offset (e.g. +00:00)", EXIT_USAGE)
    return at
