"""The sentences an admin reads when hovering a Failed status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any


def duration(delta: timedelta) -> str:
    """`3 days`, `5 hours`, `12 minutes`: the largest unit, rounded down, for a sentence."""
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def postponed_too_often(times: int, over: timedelta, last_reason: str | None) -> str:
    text = f"Postponed {times} time{'s' if times != 1 else ''} over {duration(over)}"
    return f"{text}; last device reason: {last_reason}" if last_reason else text


def device_error(chain: Sequence[Mapping[str, Any]] | None, reason: str | None) -> str:
    """The device's own words: the first entry of Apple's ErrorChain (the outermost error), with its code."""
    if chain:
        first = chain[0]
        description = (
            first.get("USEnglishDescription") or first.get("LocalizedDescription") or "unknown error"
        )
        code = " ".join(str(first[k]) for k in ("ErrorDomain", "ErrorCode") if k in first)
        return f"The device reported an error: {description}" + (f" ({code})" if code else "")
    return f"The device reported an error: {reason}" if reason else "The device reported an error"


def other_topic(device_topic: str, certificate_topic: str) -> str:
    """Why an Apple device's deployments are held: it enrolled under a topic the certificate doesn't serve."""
    # Under the 200 characters a hold reason keeps, with two topics of 60.
    return (
        f"device topic {device_topic} is not the certificate's {certificate_topic}: "
        "upload that certificate or re-enroll"
    )
