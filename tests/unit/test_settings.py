"""Settings: the embedded defaults, URL normalization, and errors that name the variable."""

from __future__ import annotations

import os

import pytest

from config.errors import MdmqError
from config.settings import Environment, SettingsError, load_settings, redact_url


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("MDMQ_")]:
        monkeypatch.delenv(name)


def test_the_defaults_are_the_embedded_mode() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///mdmq.db"
    assert settings.broker_url == "stub://"
    assert settings.is_embedded
    assert not settings.json_logs


def test_environment_variables_are_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDMQ_DATABASE_URL", "postgresql://mdmq@db:5432/mdmq")
    monkeypatch.setenv("MDMQ_BROKER_URL", "redis://cache:6379/0")
    monkeypatch.setenv("MDMQ_ENVIRONMENT", "production")
    monkeypatch.setenv("MDMQ_SECRET_KEY", "a-key")  # production refuses to start without one

    settings = load_settings()

    assert settings.database_url == "postgresql+psycopg://mdmq@db:5432/mdmq", "libpq URLs mean psycopg 3"
    assert settings.environment is Environment.production
    assert settings.json_logs
    assert not settings.is_embedded


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MDMQ_DATABASE_URL", "nonsense://", "expected sqlite:///PATH or postgresql+psycopg://"),
        ("MDMQ_DATABASE_URL", "mysql://root@db/mdmq", "got 'mysql://root@db/mdmq'"),
        ("MDMQ_BROKER_URL", "kafka://broker:9092", "expected stub://, redis://"),
        ("MDMQ_DISPATCH_CHUNK_SIZE", "0", "greater than or equal to 1"),
        ("MDMQ_PROVIDER_IDLE_S", "5", "greater than or equal to 10"),
        ("MDMQ_PROVIDER_MAX_CONNECTIONS", "0", "greater than or equal to 1"),
        ("MDMQ_ENVIRONMENT", "staging", "'development' or 'production'"),
    ],
)
def test_a_wrong_setting_names_the_variable_and_what_was_expected(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert isinstance(raised.value, MdmqError)
    assert raised.value.variable == variable
    assert str(raised.value).startswith(f"{variable}: ")
    assert expected in str(raised.value)


def test_an_error_never_repeats_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDMQ_DATABASE_URL", "mysql://admin:hunter2@db/mdmq")

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert "hunter2" not in str(raised.value)
    assert "admin:***@db" in str(raised.value)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("postgresql://mdmq@db/mdmq", "postgresql://mdmq@db/mdmq"),
        ("sqlite:///mdmq.db", "sqlite:///mdmq.db"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
