"""Sentry with a test transport: what mdmq would have sent, captured in memory."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class SentryServer:
    """A Sentry ingest endpoint on loopback for processes a test starts: every envelope they send, kept
    decoded. `dsn` is what their `MDMQ_SENTRY_DSN` is set to."""

    def __init__(self) -> None:
        self.envelopes: list[str] = []
        received = self.envelopes

        class Ingest(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                received.append(body.decode(errors="replace"))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Ingest)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self._server.server_address[1]}/1"

    def items(self, kind: str) -> list[dict[str, Any]]:
        """The payloads of the envelope items of `kind` (`event`, `check_in`) received so far."""
        found = []
        for envelope in list(self.envelopes):
            lines = envelope.splitlines()
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):  # item header, payload
                try:
                    if json.loads(header).get("type") == kind:
                        found.append(json.loads(payload))
                except (json.JSONDecodeError, AttributeError):
                    continue
        return found

    def __enter__(self) -> SentryServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
