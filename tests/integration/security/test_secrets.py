"""Secrets at rest on PostgreSQL (SQLite where the embedded mode differs): credential material and push magic
are stored encrypted and read in clear; plaintext rows of the previous release still work; rotation moves
every row to the newest key; a wrong key holds the organization's pushes and marks nothing invalid;
production refuses to start without a key; the embedded mode's files are private."""

from __future__ import annotations

import logging
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select
from typer.testing import CliRunner

from cli.main import app as cli
from cli.secrets import check_key_at_start
from config.settings import Settings, SettingsError, load_settings
from models.database import create_engine
from models.enums import CredentialStatus, Platform, Provider, TokenState
from models.secrets import (
    CANNOT_DECRYPT,
    GENERATED_KEY_NAME,
    SEALED_PREFIX,
    CannotDecrypt,
    KeyRing,
    Undecryptable,
    key_ring_from_settings,
)
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization, get_deployment
from models.store.audit import SECRETS_ROTATED, audit_events
from models.store.devices import NewDevice, add_devices
from models.store.secrets import KeyCheck, check_key
from models.tables import Device, ProviderHold, PushCredential
from sandbox import Delivery, DeviceRegistry, SandboxThread
from sandbox.credentials import DemoCredential, register_credentials, store_credentials
from sandbox.fleet import APNS_TOPIC
from tests.helpers import run_mdmq, sandbox_endpoints, sessions
from tests.integration.api.conftest import Client
from workers.app import App
from workers.policy import RetryPolicy
from workers.push_gateway import PushGateway
from workers.services.dispatch import dispatch_chunk

OLD_KEY, NEW_KEY = KeyRing.generate_key(), KeyRing.generate_key()
MAGIC = "8A6C1F8E-2D41-4B43-9F3A-6A2E4E5B7C10"  # a push magic's shape: a UUID
ORG = "acme"


@pytest.fixture
def mdmq(pg: Engine, postgres_url: str) -> Iterator[App]:
    """The API's application, with a secret key (the security suite's other modules run without one)."""
    app = App(Settings(database_url=postgres_url, broker_url="stub://", secret_key=NEW_KEY))
    yield app
    app.close()


@pytest.fixture
def registry() -> DeviceRegistry:
    return DeviceRegistry()


@pytest.fixture
def material(registry: DeviceRegistry) -> dict[Provider, DemoCredential]:
    return register_credentials(registry)


def engine_with(postgres_url: str, *keys: str) -> Engine:
    """An engine of its own on the test database, encrypting with `keys` (none: plaintext, as the previous
    release wrote)."""
    return create_engine(postgres_url, pool_size=1, key_ring=KeyRing(keys) if keys else None)


@pytest.fixture
def engines(pg: Engine, postgres_url: str) -> Iterator[dict[str, Engine]]:
    made = {
        "plaintext": engine_with(postgres_url),
        "old": engine_with(postgres_url, OLD_KEY),
        "new": engine_with(postgres_url, NEW_KEY),
        "ring": engine_with(postgres_url, NEW_KEY, OLD_KEY),
    }
    yield made
    for engine in made.values():
        engine.dispose()


def raw(engine: Engine, statement: str) -> list[str]:
    """What the database holds, read past the models."""
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(sa.text(statement))]


def iphone(engine: Engine, registry: DeviceRegistry, *, magic: str = MAGIC) -> tuple[str, str]:
    """One iPhone of acme, known to the APNs emulator, and a profile deployed to it: their ids."""
    token = secrets.token_hex(32)
    registry.add_apns_device(token, topic=APNS_TOPIC, environment="development")
    with Session(engine) as s, s.begin():
        ensure_organization(s, organization_id=ORG)
        [device] = add_devices(s, organization_id=ORG, devices=[NewDevice(Platform.ios, token, magic)])
        [deployment] = create_deployments(
            s, organization_id=ORG, deployments=[NewDeployment(device, Kind.profile)]
        )
    return device, deployment


def store(engine: Engine, material: dict[Provider, DemoCredential]) -> None:
    with Session(engine) as s, s.begin():
        ensure_organization(s, organization_id=ORG)
        store_credentials(s, ORG, {Provider.apns: material[Provider.apns]})


def dispatch(engine: Engine, registry: DeviceRegistry, deployment: str) -> tuple[int, list[Delivery]]:
    """Dispatch one deployment through the emulators: how many were held, and what reached a device."""
    delivered: list[Delivery] = []
    registry.subscribe(delivered.append)
    with SandboxThread(registry, tls=True) as sandbox:
        gateway = PushGateway(sandbox_endpoints(sandbox))
        try:
            summary = dispatch_chunk(sessions(engine), gateway, [deployment], policy=RetryPolicy.defaults())
        finally:
            gateway.close()
    return summary.held, delivered


def test_uploaded_credentials_and_push_magic_are_stored_encrypted_and_read_in_clear(
    client: Client, mdmq: App, material: dict[Provider, DemoCredential]
) -> None:
    from models.store.tokens import create_token

    with mdmq.session() as s:
        ensure_organization(s, organization_id=ORG)
        _, token = create_token(s, organization_id=ORG, permissions=["mdm.credential.manage"])
        add_devices(s, organization_id=ORG, devices=[NewDevice(Platform.ios, "ab" * 32, MAGIC)])
    for provider, credential in material.items():
        answer = client.http.put(
            f"{client.base_url}/v1/organizations/{ORG}/credentials/{provider.value}",
            json={"kind": credential.kind.value, "secret": credential.secret},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text

    stored = raw(mdmq.engine, "SELECT secret FROM push_credential UNION ALL SELECT push_magic FROM device")
    assert len(stored) == 4
    assert all(value.startswith(SEALED_PREFIX) for value in stored)
    plaintexts = [c.secret for c in material.values()] + [MAGIC]
    assert not any(p in value or p[:40] in value for p in plaintexts for value in stored)
    with mdmq.session() as s:
        read = {c.provider: c.secret for c in s.exec(select(PushCredential))}
        assert read == {p: c.secret for p, c in material.items()}
        assert [d.push_magic for d in s.exec(select(Device))] == [MAGIC]
    assert raw(mdmq.engine, "SELECT push_token FROM device") == ["ab" * 32], "tokens stay searchable"


def test_plaintext_rows_of_the_previous_release_are_read_and_pushed(
    engines: dict[str, Engine], registry: DeviceRegistry, material: dict[Provider, DemoCredential]
) -> None:
    store(engines["plaintext"], material)
    _, deployment = iphone(engines["plaintext"], registry)
    assert raw(engines["new"], "SELECT push_magic FROM device") == [MAGIC], "written in plaintext"

    held, delivered = dispatch(engines["new"], registry, deployment)

    assert held == 0
    assert [d.payload for d in delivered] == [{"mdm": MAGIC}], "the push magic reached the device in clear"
    with Session(engines["new"]) as s:
        assert get_deployment(s, deployment_id=deployment).status is Status.queued  # type: ignore[union-attr]


@pytest.fixture
def sqlite_with_key() -> Iterator[Engine]:
    engine = create_engine("sqlite://", key_ring=KeyRing([NEW_KEY]))
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_encrypted_rows_are_pushed_through_the_emulators(
    backend: str, request: pytest.FixtureRequest, registry: DeviceRegistry,
    material: dict[Provider, DemoCredential],
) -> None:  # fmt: skip
    engine: Engine = (
        request.getfixturevalue("engines")["new"]
        if backend == "postgresql"
        else request.getfixturevalue("sqlite_with_key")
    )
    store(engine, material)
    _, deployment = iphone(engine, registry)
    assert all(v.startswith(SEALED_PREFIX) for v in raw(engine, "SELECT push_magic FROM device"))

    held, delivered = dispatch(engine, registry, deployment)

    assert held == 0
    assert [d.payload for d in delivered] == [{"mdm": MAGIC}]


def test_rotation_reencrypts_every_row_under_the_newest_key_and_says_how_many(
    engines: dict[str, Engine], registry: DeviceRegistry, material: dict[Provider, DemoCredential],
    postgres_url: str,
) -> None:  # fmt: skip
    store(engines["plaintext"], material)  # a plaintext credential
    iphone(engines["plaintext"], registry)  # a plaintext push magic
    iphone(engines["old"], registry)  # one under the old key
    iphone(engines["new"], registry)  # one under the newest key already
    environment = {"MDMQ_DATABASE_URL": postgres_url, "MDMQ_SECRET_KEY": f"{NEW_KEY},{OLD_KEY}"}

    first = CliRunner().invoke(cli, ["secrets", "rotate"], env=environment)
    again = CliRunner().invoke(cli, ["secrets", "rotate", "--json"], env=environment)

    assert first.exit_code == 0, first.output
    assert "re-encrypted 3 rows under the newest key: 1 credentials, 2 push magics" in first.output
    assert again.exit_code == 0, again.output
    assert '"reencrypted": 0' in again.output, "rows under the newest key are left"
    newest_only = KeyRing([NEW_KEY])
    stored = raw(engines["new"], "SELECT secret FROM push_credential UNION ALL SELECT push_magic FROM device")
    assert len(stored) == 4
    assert all(newest_only.is_newest(value) for value in stored)
    with Session(engines["new"]) as s:
        assert [d.push_magic for d in s.exec(select(Device))] == [MAGIC] * 3
        [event] = audit_events(s, organization_id=ORG, action=SECRETS_ROTATED)
    assert (event.actor, event.detail) == ("cli", {"rows": 3, "keyId": newest_only.newest_key_id})


def test_a_credential_the_key_cannot_decrypt_holds_the_organization_and_stays_valid(
    engines: dict[str, Engine], registry: DeviceRegistry, material: dict[Provider, DemoCredential]
) -> None:
    store(engines["old"], material)
    _, deployment = iphone(engines["plaintext"], registry)

    held, delivered = dispatch(engines["new"], registry, deployment)  # the old key is not in the ring

    assert (held, delivered) == (1, [])
    with Session(engines["new"]) as s:
        assert get_deployment(s, deployment_id=deployment).hold_reason == CANNOT_DECRYPT  # type: ignore[union-attr]
        credential = s.exec(select(PushCredential)).one()
        assert isinstance(credential.secret, Undecryptable)
        assert credential.status is CredentialStatus.valid, "the key is wrong, not the credential"
        hold = s.exec(select(ProviderHold)).one()
        assert (hold.reason, hold.scope) == (CANNOT_DECRYPT, "config")
        assert check_key(s, ring=KeyRing([NEW_KEY])) is KeyCheck.cannot_decrypt

    # With the key back in the ring, the same row pushes.
    with Session(engines["ring"]) as s, s.begin():
        from models.store.holds import release_provider

        release_provider(s, organization_id=ORG, provider=Provider.apns)
    assert dispatch(engines["ring"], registry, deployment)[0] == 0


def test_a_push_magic_the_key_cannot_decrypt_holds_and_touches_no_token(
    engines: dict[str, Engine], registry: DeviceRegistry, material: dict[Provider, DemoCredential]
) -> None:
    store(engines["new"], material)
    device, deployment = iphone(engines["old"], registry)

    held, delivered = dispatch(engines["new"], registry, deployment)

    assert (held, delivered) == (1, []), "no ciphertext is sent as a push magic"
    with Session(engines["new"]) as s:
        assert get_deployment(s, deployment_id=deployment).hold_reason == CANNOT_DECRYPT  # type: ignore[union-attr]
        row = s.get(Device, device)
        assert row is not None
        assert row.token_state is TokenState.valid
        assert s.exec(select(PushCredential)).one().status is CredentialStatus.valid


def test_the_start_up_check_says_when_the_key_cannot_decrypt(
    engines: dict[str, Engine], material: dict[Provider, DemoCredential], postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    store(engines["old"], material)
    caplog.set_level(logging.WARNING, logger="cli.secrets")

    wrong = check_key_at_start(Settings(database_url=postgres_url, secret_key=NEW_KEY))
    right = check_key_at_start(Settings(database_url=postgres_url, secret_key=f"{NEW_KEY},{OLD_KEY}"))

    assert (wrong, right) == (KeyCheck.cannot_decrypt, KeyCheck.decrypts)
    said = caplog.text
    assert "the secret key cannot decrypt the stored secrets" in said
    assert OLD_KEY not in said
    assert NEW_KEY not in said


def test_production_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(environment="production", database_url="postgresql://db/mdmq")
    assert refused.value.variable == "MDMQ_SECRET_KEY"

    started = run_mdmq("scheduler", env={"MDMQ_ENVIRONMENT": "production"}, timeout_s=60, cwd=tmp_path)
    assert started.returncode == 2
    assert "MDMQ_SECRET_KEY: production needs a key" in started.stderr


def test_a_malformed_key_is_refused_naming_the_variable(postgres_url: str) -> None:
    app = App(Settings(database_url=postgres_url, secret_key="not-a-key"))
    with pytest.raises(SettingsError) as refused:
        _ = app.key_ring
    assert refused.value.variable == "MDMQ_SECRET_KEY"
    assert "not-a-key" not in str(refused.value)


def test_the_embedded_mode_generates_its_key_and_keeps_its_files_private(tmp_path: Path) -> None:
    from models.migrations.runner import upgrade

    database = tmp_path / "data" / "mdmq.db"
    url = f"sqlite:///{database}"
    upgrade(url)
    app = App(Settings(database_url=url))
    try:
        with app.session() as s:
            ensure_organization(s, organization_id=ORG)
            add_devices(s, organization_id=ORG, devices=[NewDevice(Platform.ios, "cd" * 32, MAGIC)])
        [stored] = raw(app.engine, "SELECT push_magic FROM device")
    finally:
        app.close()

    key = database.parent / GENERATED_KEY_NAME
    assert stat.S_IMODE(database.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stored.startswith(SEALED_PREFIX)
    assert KeyRing([key.read_text().strip()]).open(stored) == MAGIC
    assert list(key.parent.glob(f".{GENERATED_KEY_NAME}.*")) == [], "no draft left beside it"

    key.write_text("")  # emptied by a crash or a bad restore: one clear line, not a traceback
    with pytest.raises(SettingsError) as refused:
        key_ring_from_settings(Settings(database_url=url))
    assert refused.value.variable == "MDMQ_SECRET_KEY"
    assert "holds none" in str(refused.value)


def test_a_value_names_its_key_and_a_tampered_one_is_not_decrypted() -> None:
    ring = KeyRing([NEW_KEY, OLD_KEY])
    sealed = KeyRing([OLD_KEY]).seal(MAGIC)
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")

    assert ring.open(sealed) == MAGIC, "an older key of the ring decrypts what it encrypted"
    assert not ring.is_newest(sealed)
    assert ring.is_newest(ring.seal(MAGIC))
    assert MAGIC not in sealed
    with pytest.raises(CannotDecrypt):
        ring.open(tampered)
    with pytest.raises(CannotDecrypt):
        KeyRing([NEW_KEY]).open(sealed)


def test_the_scheduler_neither_crashes_nor_invalidates_on_a_wrong_key(
    engines: dict[str, Engine], registry: DeviceRegistry, material: dict[Provider, DemoCredential],
    postgres_url: str,
) -> None:  # fmt: skip
    from scheduler.certificates import watch_certificates
    from scheduler.holds import probe_holds_job
    from workers.actors import declare_actors

    store(engines["old"], material)
    _, deployment = iphone(engines["plaintext"], registry)
    assert dispatch(engines["new"], registry, deployment)[0] == 1
    app = App(Settings(database_url=postgres_url, broker_url="stub://", secret_key=NEW_KEY))
    try:
        with app.session() as s:
            hold = s.exec(select(ProviderHold)).one()
        assert hold.probe_at is not None

        watch_certificates(app, hold.probe_at)
        released = probe_holds_job(declare_actors(app), hold.probe_at)

        with app.session() as s:
            credential = s.exec(select(PushCredential)).one()
            tried = s.exec(select(ProviderHold)).one()
    finally:
        app.close()
    assert released == 0
    assert (credential.status, credential.status_reason) == (CredentialStatus.valid, None)
    assert tried.last_probe_result == CANNOT_DECRYPT


def test_an_empty_key_file_is_refused_naming_the_variable(tmp_path: Path, postgres_url: str) -> None:
    empty = tmp_path / "secret.key"
    empty.write_text("# no key yet\n")
    app = App(Settings(database_url=postgres_url, secret_key_file=str(empty)))
    with pytest.raises(SettingsError) as refused:
        _ = app.key_ring
    assert refused.value.variable == "MDMQ_SECRET_KEY_FILE"
