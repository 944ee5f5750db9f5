"""The store of holds, answer windows and invalidated tokens, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from models.enums import Platform, Provider, TokenState
from models.statuses import Kind, Status
from models.store import NewDeployment, create_deployments, ensure_organization
from models.store.devices import NewDevice, add_devices
from models.store.dispatch import Invalidation, hold_for_credential, invalidate_tokens
from models.store.holds import (
    NewHold,
    answers_to_come,
    devices_served,
    due_probes,
    first_dead_answers,
    hold_provider,
    probe_failed,
    provider_holds,
    purge_dead_answers,
    record_answers,
    release_provider,
    restore_tokens,
    still_held,
)
from models.tables import Deployment, Device, ProviderHold
from models.types import utcnow


def _devices(engine: Engine, count: int, organization_id: str = "acme") -> list[str]:
    with Session(engine) as s, s.begin():
        ensure_organization(s, organization_id=organization_id)
        return add_devices(
            s,
            organization_id=organization_id,
            devices=[NewDevice(Platform.ios, f"{organization_id}{i:060x}") for i in range(count)],
        )


def test_the_window_keeps_the_last_answers_of_each_credential(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        assert record_answers(s, fingerprint="f1", answers="a" * 150, keep=200) == "a" * 150
        assert record_answers(s, fingerprint="f1", answers="d" * 100, keep=200) == "a" * 100 + "d" * 100
        assert record_answers(s, fingerprint="f2", answers="d", keep=200) == "d", "a window per credential"
        assert record_answers(s, fingerprint="f1", answers="", keep=200) == "", "nothing to add, nothing read"
        assert record_answers(s, fingerprint="f1", answers="a" * 300, keep=200) == "a" * 200


def test_a_devices_dead_token_answer_counts_once_per_credential_until_its_token_is_restored(
    engine: Engine,
) -> None:
    devices = _devices(engine, 3)
    now = utcnow()
    with Session(engine) as s, s.begin():
        assert first_dead_answers(s, fingerprint="f1", device_ids=devices[:2], now=now) == set(devices[:2])
        assert first_dead_answers(s, fingerprint="f1", device_ids=devices, now=now) == {devices[2]}
        assert first_dead_answers(s, fingerprint="f1", device_ids=devices, now=now) == set()
        assert first_dead_answers(s, fingerprint="f2", device_ids=devices[:1], now=now) == {devices[0]}, (
            "per credential"
        )
        assert first_dead_answers(s, fingerprint="f1", device_ids=[], now=now) == set()
        invalidate_tokens(s, invalidations=[Invalidation(devices[0], "BadDeviceToken", now, 400, "f1", True)])
    with Session(engine) as s, s.begin():
        assert restore_tokens(s, organization_id="acme") == 1
        assert first_dead_answers(s, fingerprint="f1", device_ids=devices, now=now) == {devices[0]}, (
            "a restored token's next answer counts again, through every credential"
        )
        assert first_dead_answers(s, fingerprint="f2", device_ids=devices[:1], now=now) == {devices[0]}
    with Session(engine) as s, s.begin():
        assert purge_dead_answers(s, before=now) == 0
        assert purge_dead_answers(s, before=now + timedelta(seconds=1)) == 4
        assert first_dead_answers(s, fingerprint="f1", device_ids=devices[1:2], now=now) == {devices[1]}


def test_devices_served_counts_up_to_what_is_asked(engine: Engine) -> None:
    _devices(engine, 7)
    with Session(engine) as s:
        assert devices_served(s, organization_id="acme", provider=Provider.apns, at_most=20) == 7
        assert devices_served(s, organization_id="acme", provider=Provider.apns, at_most=5) == 5
        assert devices_served(s, organization_id="acme", provider=Provider.fcm, at_most=20) == 0


def test_answers_can_come_only_from_a_device_with_a_push_ahead_not_counted_dead(engine: Engine) -> None:
    """A device adds to a credential's window only when it is pushed again: a deployment Queued and not
    held, a valid token, and no dead-token answer the window counts already."""
    quiet, held, dead, invalid, waiting = _devices(engine, 5)

    def to_come(fingerprint: str = "f1") -> bool:
        with Session(engine) as s:
            return answers_to_come(s, organization_id="acme", provider=Provider.apns, fingerprint=fingerprint)

    with Session(engine) as s, s.begin():
        completed = create_deployments(
            s, organization_id="acme", deployments=[NewDeployment(quiet, Kind.app)]
        )
        queued = create_deployments(
            s,
            organization_id="acme",
            deployments=[NewDeployment(d, Kind.profile) for d in (held, dead, invalid)],
        )
        for row in s.exec(select(Deployment).where(Deployment.id == completed[0])):
            row.status = Status.completed
        for row in s.exec(select(Deployment).where(Deployment.id == queued[0])):
            row.hold_reason = "APNs credential refused"
        first_dead_answers(s, fingerprint="f1", device_ids=[dead], now=utcnow())
        invalidate_tokens(
            s, invalidations=[Invalidation(invalid, "Unregistered", utcnow(), 410, "f1", False)]
        )
    assert not to_come(), "done, held, counted dead, or a dead token: none will add to the window"
    assert to_come("f2"), "the dead-token answer is counted per credential"
    with Session(engine) as s:
        assert not answers_to_come(s, organization_id="acme", provider=Provider.fcm, fingerprint="f2")
        assert not answers_to_come(s, organization_id="other", provider=Provider.apns, fingerprint="f2")

    with Session(engine) as s, s.begin():
        create_deployments(s, organization_id="acme", deployments=[NewDeployment(waiting, Kind.profile)])
    assert to_come()


def test_an_invalidation_is_recorded_and_restored_by_what_an_operator_selects(engine: Engine) -> None:
    devices = _devices(engine, 4)
    now = utcnow()
    with Session(engine) as s, s.begin():
        invalidated = invalidate_tokens(
            s,
            invalidations=[
                Invalidation(devices[0], "BadDeviceToken", now, 400, "wrong", ambiguous=True),
                Invalidation(devices[1], "BadDeviceToken", now, 400, "wrong", ambiguous=True),
                Invalidation(
                    devices[2], "Unregistered", now - timedelta(days=2), 410, "right", ambiguous=False
                ),
            ],
        )
        assert invalidated == 3
        again = invalidate_tokens(
            s, invalidations=[Invalidation(devices[0], "BadDeviceToken", now, 400, "x", ambiguous=True)]
        )
        assert again == 0, "a token already invalid keeps its first record"
    with Session(engine) as s:
        row = s.get(Device, devices[0])
        assert row is not None
        assert (row.token_state, row.token_invalid_reason, row.token_invalid_status) == (
            TokenState.invalid,
            "BadDeviceToken",
            400,
        )
        assert (row.token_invalid_fingerprint, row.token_invalid_ambiguous) == ("wrong", True)
    with Session(engine) as s, s.begin():
        assert restore_tokens(s, organization_id="acme", fingerprint="nobody") == 0
        assert restore_tokens(s, organization_id="other", fingerprint="wrong") == 0
        assert restore_tokens(s, organization_id="acme", ambiguous_only=True) == 2
        assert restore_tokens(s, organization_id="acme", since=now - timedelta(hours=1)) == 0
        assert restore_tokens(s, organization_id="acme", since=now - timedelta(days=3)) == 1
    with Session(engine) as s:
        states = {d.id: d.token_state for d in s.exec(select(Device))}
        assert set(states.values()) == {TokenState.valid}
        restored = s.get(Device, devices[0])
        assert restored is not None
        assert restored.token_invalid_reason is None


def test_a_hold_is_recorded_probed_on_its_schedule_and_released(engine: Engine) -> None:
    devices = _devices(engine, 3)
    now = utcnow()
    with Session(engine) as s, s.begin():
        ids = create_deployments(
            s, organization_id="acme", deployments=[NewDeployment(d, Kind.profile) for d in devices]
        )
        hold = NewHold(
            "acme", Provider.apns, "config", "wrong topic: upload the renewed certificate", None, "f"
        )
        hold_provider(s, hold=hold, probe_at=now + timedelta(seconds=60), now=now)
        assert hold_for_credential(s, organization_id="acme", provider=Provider.apns, reason=hold.reason) == 3
    with Session(engine) as s, s.begin():
        assert due_probes(s, now=now, limit=10) == [], "not before its time"
        [due] = due_probes(s, now=now + timedelta(seconds=61), limit=10)
        assert (due.organization_id, due.provider, due.scope) == ("acme", Provider.apns, "config")
        probe_failed(
            s,
            organization_id="acme",
            provider=Provider.apns,
            result="DeviceTokenNotForTopic",
            next_probe_at=now + timedelta(seconds=180),
            now=now + timedelta(seconds=61),
        )
    with Session(engine) as s, s.begin():
        again = provider_holds(s, organization_ids={"acme"})[("acme", Provider.apns)]
        assert (again.probe_failures, again.last_probe_result) == (1, "DeviceTokenNotForTopic")
        assert due_probes(s, now=now + timedelta(seconds=120), limit=10) == []
        released = release_provider(s, organization_id="acme", provider=Provider.apns)
    assert sorted(released) == sorted(ids)
    with Session(engine) as s:
        assert s.exec(select(ProviderHold)).all() == []
        assert {d.hold_reason for d in s.exec(select(Deployment))} == {None}


def test_an_earlier_hold_is_not_the_one_standing_after_a_release_and_a_new_hold(engine: Engine) -> None:
    """The probe tried the hold of its `held_at`; if that hold was released and the organization held again
    while the probe was out, the probe's success says nothing about the new hold: it is not still held,
    and the new hold stands until its own try."""
    devices = _devices(engine, 2)
    now = utcnow()
    with Session(engine) as s, s.begin():
        create_deployments(
            s, organization_id="acme", deployments=[NewDeployment(d, Kind.app) for d in devices]
        )
        hold = NewHold("acme", Provider.apns, "config", "held again", None, "f")
        hold_provider(s, hold=hold, probe_at=now, now=now)
        hold_for_credential(s, organization_id="acme", provider=Provider.apns, reason=hold.reason)
    tried = ProviderHold(
        organization_id="acme", provider=Provider.apns, scope="config", reason="held first", held_at=now
    )
    with Session(engine) as s, s.begin():
        tried.held_at = now - timedelta(minutes=5)
        assert not still_held(s, hold=tried, organization_id="acme", provider=Provider.apns)
    with Session(engine) as s, s.begin():
        assert s.exec(select(ProviderHold)).one().reason == "held again"
        tried.held_at = now
        assert still_held(s, hold=tried, organization_id="acme", provider=Provider.apns)
        assert len(release_provider(s, organization_id="acme", provider=Provider.apns)) == 2
