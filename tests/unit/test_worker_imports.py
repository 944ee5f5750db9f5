"""What a worker process imports: not Sentry's SDK and its HTTP clients when no DSN is set (some 6 MB of
every worker process's memory), not pika on another broker than RabbitMQ (2 MiB)."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import sys, workers.main; print('sentry_sdk' in sys.modules)"


def imports_sentry(dsn: str | None) -> bool:
    environment = {k: v for k, v in os.environ.items() if k != "MDMQ_SENTRY_DSN"}
    if dsn:
        environment["MDMQ_SENTRY_DSN"] = dsn
    answer = subprocess.run(
        [sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, check=True
    )
    return answer.stdout.strip() == "True"


def test_a_worker_without_a_dsn_does_not_import_sentry_and_one_with_a_dsn_does() -> None:
    assert imports_sentry(None) is False
    assert imports_sentry("https://public@sentry.invalid/1") is True


def imports_pika(broker_url: str) -> bool:
    environment = {k: v for k, v in os.environ.items() if k != "MDMQ_BROKER_URL"}
    environment["MDMQ_BROKER_URL"] = broker_url  # nothing is connected to: the broker is built lazily
    probe = "import sys, workers.main; print('pika' in sys.modules)"
    answer = subprocess.run(
        [sys.executable, "-c", probe], env=environment, capture_output=True, text=True, check=True
    )
    return answer.stdout.strip() == "True"


def test_a_worker_imports_pika_only_when_its_broker_is_rabbitmq() -> None:
    assert imports_pika("redis://127.0.0.1:6379/0") is False
    assert imports_pika("amqp://guest:guest@127.0.0.1:5672/%2F") is True
