"""Sentry with a test transport: what mdmq would have sent, captured in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport


class Captured(Transport):
    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.check_ins: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        for item in envelope.items:
            payload = item.payload.json
            if payload is None:
                continue
            if item.type == "check_in":
                self.check_ins.append(payload)
            elif item.type == "event":
                self.events.append(payload)

    @property
    def messages(self) -> list[str]:
        return [
            str(event.get("message") or event.get("logentry", {}).get("message")) for event in self.events
        ]


@pytest.fixture
def sentry() -> Iterator[Captured]:
    """Sentry on, with every envelope captured here; off again afterwards."""
    transport = Captured()
    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=transport)
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.init()
