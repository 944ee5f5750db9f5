"""Sentry: an actor that fails with push tokens, push magic and a key in its arguments and its error sends
an event (captured by a test transport) that holds none of them; `scrub` on every shape an event takes."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import sentry_sdk
from dramatiq.brokers.stub import StubBroker

from config.sentry import FILTERED, init_sentry, scrub
from config.settings import Settings
from tests.sentry import Captured

APNS_TOKEN = secrets.token_hex(32)
FCM_TOKEN = "c" * 22 + ":APA91b" + "d" * 134
PUSH_MAGIC = "9F1D1E6A-1B2C-4D3E-8F00-ABCDEF012345"
API_TOKEN = "mdmq_" + secrets.token_urlsafe(32)
PEM = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n"
JWT = "eyJhbGciOiJFUzI1NiIsImtpZCI6IktFWSJ9.eyJpc3MiOiJURUFNIiwiaWF0IjoxfQ.c2lnbmF0dXJl"
SECRETS = (APNS_TOKEN, FCM_TOKEN, PUSH_MAGIC, API_TOKEN, "MIGHAgEAMBMGByqGSM49", JWT)


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[Captured]:
    transport = Captured()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 's.db'}", sentry_dsn="https://k@sentry.invalid/1"
    )
    assert init_sentry(settings, process="worker", transport=transport) is True
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.init()


def test_a_failing_actor_reports_without_any_secret(captured: Captured) -> None:
    broker = StubBroker()  # built after init: Dramatiq's integration is on it
    failed = threading.Event()

    def push(token: str, magic: str, key: str) -> None:
        failed.set()
        raise RuntimeError(f"APNs refused {token} (magic {magic}) with {JWT}")

    actor = dramatiq.Actor(
        push, actor_name="push", queue_name="q", priority=0, options={"max_retries": 0}, broker=broker
    )
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        actor.send(APNS_TOKEN, PUSH_MAGIC, PEM)
        broker.join("q", fail_fast=False)
    finally:
        worker.stop()
    sentry_sdk.flush()

    assert failed.is_set()
    assert captured.events, "the failure reached Sentry"
    sent = json.dumps(captured.events)
    assert "RuntimeError" in sent
    assert [s for s in SECRETS if s in sent] == []


def test_scrub_filters_secrets_by_value_and_by_key() -> None:
    event = {
        "message": f"token {APNS_TOKEN} and {FCM_TOKEN}",
        "exception": {"values": [{"type": "ValueError", "value": f"bad magic {PUSH_MAGIC}, key {PEM}"}]},
        "extra": {"authorization": f"Bearer {API_TOKEN}", "push_magic": "short", "deployment_id": "6b04" * 6},
        "contexts": {"dramatiq": {"type": "dramatiq", "data": {"args": [APNS_TOKEN], "kwargs": {}}}},
        "breadcrumbs": {"values": [{"message": f"POST with {JWT}", "data": {"secret": "x"}}]},
    }

    cleaned = scrub(event)

    sent = json.dumps(cleaned)
    assert [s for s in SECRETS if s in sent] == []
    assert cleaned["extra"]["deployment_id"] == "6b04" * 6, "ids and the rest stay readable"
    assert cleaned["exception"]["values"][0]["type"] == "ValueError"
    assert cleaned["extra"]["push_magic"] == FILTERED
    assert cleaned["contexts"]["dramatiq"]["type"] == "dramatiq"
