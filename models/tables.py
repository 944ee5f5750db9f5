"""The SQLModel tables of DESIGN §2. All SQL that reads or writes them lives in `models.store`.

`deployment` and `deployment_event` carry no foreign keys: on PostgreSQL each would lock the parent row for
every inserted row, the largest cost of bulk creation. The store keeps the same promises set-based instead:
a deployment is created only for devices of its own organization (checked in one statement), devices are
never deleted under their deployments, and the retention purge removes events together with their
deployment.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from models.enums import (
    Actor,
    CertificateSource,
    CredentialKind,
    CredentialStatus,
    Platform,
    Provider,
    PushEnvironment,
    TokenState,
)
from models.secrets import SecretText
from models.statuses import Kind, Status
from models.types import JSON, UTCDateTime, str_enum, utcnow

ID = sa.String(24)
ORG_ID = sa.String(64)
# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


def _created() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class Organization(SQLModel, table=True):
    """The tenant. Its settings override the defaults of the retry policy and pacing."""

    id: str = Field(sa_type=ORG_ID, primary_key=True)
    name: str = Field(default="", sa_type=sa.String(200))
    wake_rate_per_s: float | None = None  # wake-up pushes per second on the bulk lane; None: unpaced
    # Its share of the bulk lane beside others waiting at the same time (1..100); None: 1.
    fair_weight: int | None = None
    retry_policy: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    created_at: datetime = _created()


# A fair queue's lane (`workers.fair.FairLaneName`'s values): each lane keeps turns and chunks of its own.
FAIR_LANE = sa.String(16)


def _fair_lane(*, primary_key: bool = False) -> Any:
    # The server default files the rows of code that names no lane under the bulk lane, where they were.
    return Field(
        default="bulk",
        sa_type=FAIR_LANE,
        primary_key=primary_key,
        sa_column_kwargs={"server_default": "bulk"},
    )


class FairOrganization(SQLModel, table=True):
    """An organization's place in one lane's turns, and its pacing there (`workers.fair`, on the database
    when the broker is RabbitMQ). Times in seconds since the epoch, as the fair queue computes them."""

    __tablename__ = "fair_organization"

    # Lane first: every lookup names the lane, and the lane-wide ones (the virtual time, the lowest
    # position waiting) read a range of the key.
    lane: str = _fair_lane(primary_key=True)
    organization_id: str = Field(sa_type=ORG_ID, primary_key=True)
    weight: int = 1
    rate_per_s: float | None = None
    position: int = Field(default=0, sa_type=sa.BigInteger)  # the pass: the lowest waiting goes next
    served: int = Field(default=0, sa_type=sa.BigInteger)  # its position when its last take served it
    booked_s: float = 0.0  # the end of its chunks' bookings
    tat_s: float = 0.0  # when its next chunk may be taken, paced


class FairChunk(SQLModel, table=True):
    """A chunk of a lane waiting for a token (`claim` None), or taken by the token `claim`."""

    __tablename__ = "fair_chunk"
    __table_args__ = (
        sa.Index("ix_fair_chunk_lane_org_ready", "lane", "organization_id", "ready_at_s"),
        sa.Index("ix_fair_chunk_claim", "claim"),
    )

    id: int | None = Field(default=None, sa_type=BIGINT_PK, primary_key=True)
    lane: str = _fair_lane()
    organization_id: str = Field(sa_type=ORG_ID)
    deployment_ids: list[str] = Field(sa_type=JSON)
    ready_at_s: float  # when it is booked to go
    claim: str | None = Field(default=None, sa_type=sa.String(64))  # the token's message id
    claimed_at_s: float | None = None


class PushCredential(SQLModel, table=True):
    """What mdmq signs pushes with, one per organization and provider; renewing it replaces the material."""

    __tablename__ = "push_credential"
    __table_args__ = (sa.UniqueConstraint("organization_id", "provider"),)

    id: str = Field(sa_type=ID, primary_key=True)
    organization_id: str = Field(sa_type=ORG_ID, foreign_key="organization.id")
    provider: Provider = Field(sa_type=str_enum(Provider))
    kind: CredentialKind = Field(sa_type=str_enum(CredentialKind))
    # PEM, service-account JSON or API key. Write-only: never logged, never returned; encrypted at rest.
    secret: str = Field(sa_type=SecretText(), repr=False)
    fingerprint: str = Field(sa_type=sa.String(64))
    key_id: str | None = Field(default=None, sa_type=sa.String(64))
    team_id: str | None = Field(default=None, sa_type=sa.String(64))
    topic: str | None = Field(default=None, sa_type=sa.String(255))
    project_id: str | None = Field(default=None, sa_type=sa.String(255))
    environment: PushEnvironment = Field(
        default=PushEnvironment.production, sa_type=str_enum(PushEnvironment)
    )
    not_after: datetime | None = _ts()
    status: CredentialStatus = Field(default=CredentialStatus.valid, sa_type=str_enum(CredentialStatus))
    status_reason: str | None = Field(default=None, sa_type=sa.Text)
    last_checked_at: datetime | None = _ts()
    # The certificate watch's last alert: the threshold in days it crossed (0: expired or refused), so that
    # each threshold alerts once. Cleared when the credential is replaced.
    alerted_days: int | None = None
    created_at: datetime = _created()
    updated_at: datetime = _created()


class Device(SQLModel, table=True):
    """A managed device and how to wake it: its provider, push token and, for Apple devices, push magic and
    the topic it enrolled with."""

    __table_args__ = (sa.Index("ix_device_organization", "organization_id", "id"),)

    id: str = Field(sa_type=ID, primary_key=True)
    organization_id: str = Field(sa_type=ORG_ID, foreign_key="organization.id")
    platform: Platform = Field(sa_type=str_enum(Platform))
    provider: Provider = Field(sa_type=str_enum(Provider))
    push_token: str = Field(sa_type=sa.String(512), repr=False)
    # Encrypted at rest. The token stays in clear: restores and imports look devices up by it, and without
    # the credential it wakes nothing.
    push_magic: str | None = Field(default=None, sa_type=SecretText(512), repr=False)
    token_state: TokenState = Field(default=TokenState.valid, sa_type=str_enum(TokenState))
    token_invalid_reason: str | None = Field(default=None, sa_type=sa.String(200))
    token_invalid_at: datetime | None = _ts()
    # Which answer invalidated the token, so that an invalidation can be judged, counted and undone: the
    # provider's HTTP status, the fingerprint of the credential it was sent with, and whether the answer was
    # one the providers also give for every device of a misconfigured credential (tried again once when the
    # organization's credential changes).
    token_invalid_status: int | None = None
    token_invalid_fingerprint: str | None = Field(default=None, sa_type=sa.String(64))
    token_invalid_ambiguous: bool = False
    last_seen_at: datetime | None = _ts()
    # Apple devices: the push topic the device enrolled with (its MDM enrollment's), kept for the life of the
    # enrollment; pushes are routed by it (DESIGN §2).
    topic: str | None = Field(default=None, sa_type=sa.String(255))
    labels: list[str] | None = Field(default=None, sa_type=JSON)
    created_at: datetime = _created()
    updated_at: datetime | None = _ts()
    # Unenrolled: a soft delete. The row stays for its deployments' history; nothing is pushed to it again.
    unenrolled_at: datetime | None = _ts()


class ProviderHold(SQLModel, table=True):
    """An organization's pushes through one provider, stopped because the answer was the organization's (its
    credential or configuration), not a device's. Its deployments stay Queued with `hold_reason`; the
    scheduler tries one push at `probe_at` (backing off up to an hour), and a success, a new credential or
    `mdmq release` ends the hold."""

    __tablename__ = "provider_hold"

    organization_id: str = Field(sa_type=ORG_ID, foreign_key="organization.id", primary_key=True)
    provider: Provider = Field(sa_type=str_enum(Provider), primary_key=True)
    scope: str = Field(sa_type=sa.String(16))  # the Outcome that held it: credential or config
    reason: str = Field(sa_type=sa.Text)
    provider_reason: str | None = Field(default=None, sa_type=sa.String(64))  # the raw reason, for metrics
    fingerprint: str | None = Field(default=None, sa_type=sa.String(64))
    held_at: datetime = _created()
    probe_at: datetime | None = _ts(index=True)
    probe_failures: int = 0
    last_probe_at: datetime | None = _ts()
    last_probe_result: str | None = Field(default=None, sa_type=sa.Text)


class PushAnswerWindow(SQLModel, table=True):
    """The last answers a credential got, one character each (`a` accepted or the device's own answer, `d`
    a dead-token answer), oldest first: shared by every worker process, so that the dispatch can tell one
    dead token among working ones from a credential that every device refuses."""

    __tablename__ = "push_answer_window"

    fingerprint: str = Field(sa_type=sa.String(64), primary_key=True)
    answers: str = Field(default="", sa_type=sa.String(512))
    updated_at: datetime = _created()


class PushDeadAnswer(SQLModel, table=True):
    """The devices whose dead-token answer a credential's window counts already: each device once, however
    often it is pushed (a chunk taken again after a worker died before recording it, two chunks in flight
    for the same device), so that one device's answers never weigh as several devices'. A row goes when the
    hold it led to is released, when the device's token is restored, or with the retention purge."""

    __tablename__ = "push_dead_answer"

    fingerprint: str = Field(sa_type=sa.String(64), primary_key=True)
    device_id: str = Field(sa_type=ID, primary_key=True)
    at: datetime = _created()


class AuditEvent(SQLModel, table=True):
    """Who changed what an organization's pushes depend on, and when: forced topic changes, releases of
    holds, restored tokens. `detail` names no secret."""

    __tablename__ = "audit_event"
    __table_args__ = (sa.Index("ix_audit_event_organization_at", "organization_id", "at"),)

    id: int | None = Field(default=None, sa_type=BIGINT_PK, primary_key=True)
    organization_id: str = Field(sa_type=ORG_ID)
    actor: str = Field(sa_type=sa.String(64))  # an API token id, "cli", "scheduler"
    action: str = Field(sa_type=sa.String(64))
    detail: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    at: datetime = _created()


class PushReceipt(SQLModel, table=True):
    """One push sent. Only providers that report delivery (AOSP) fill `delivered` and `pending_devices`."""

    __tablename__ = "push_receipt"
    __table_args__ = (sa.Index("ix_push_receipt_poll", "provider", "delivered", "expires_at"),)

    id: int | None = Field(default=None, sa_type=BIGINT_PK, primary_key=True)
    organization_id: str = Field(sa_type=ORG_ID, foreign_key="organization.id")
    provider: Provider = Field(sa_type=str_enum(Provider))
    provider_push_id: str | None = Field(default=None, sa_type=sa.String(200))
    device_count: int = 1
    sent_at: datetime = _created()
    expires_at: datetime | None = _ts()
    delivered: bool | None = None
    pending_devices: int | None = None
    last_polled_at: datetime | None = _ts()
    # The service answered INVALID_PUSH_ID before `expires_at`: it no longer tracks the push (expired early
    # or delivered to every device, by its older documents); not polled again.
    untracked_at: datetime | None = _ts()


class Rollout(SQLModel, table=True):
    """One create request's deployments, followed together: its counts are its deployments' statuses."""

    __table_args__ = (sa.Index("ix_rollout_org_created", "organization_id", "created_at"),)

    id: str = Field(sa_type=ID, primary_key=True)
    organization_id: str = Field(sa_type=ORG_ID)  # no foreign key, as on its deployments
    created_by: str | None = Field(default=None, sa_type=sa.String(64))  # an API token id, "cli"
    total: int
    kind: str = Field(sa_type=sa.String(32))  # the deployments' kind, or "mixed"
    created_at: datetime = _created()


class Deployment(SQLModel, table=True):
    """One profile, app, security action or message for one device, and where it stands."""

    __table_args__ = (
        # The sweeps: due Postponed / Waiting for startup, and Queued without a push (the relay).
        sa.Index("ix_deployment_status_next", "status", "next_attempt_at"),
        sa.Index("ix_deployment_org_status", "organization_id", "status"),
        # Coalescing: every Queued deployment of a device is served by one wake-up.
        sa.Index("ix_deployment_device_status", "device_id", "status"),
        # The retention purge; partial, so that bulk creation (nothing finished yet) skips it.
        sa.Index(
            "ix_deployment_finished",
            "finished_at",
            postgresql_where=sa.text("finished_at IS NOT NULL"),
            sqlite_where=sa.text("finished_at IS NOT NULL"),
        ),
        # A rollout's counts per status; partial, as deployments created before rollouts have none.
        sa.Index(
            "ix_deployment_rollout_status",
            "rollout_id",
            "status",
            postgresql_where=sa.text("rollout_id IS NOT NULL"),
            sqlite_where=sa.text("rollout_id IS NOT NULL"),
        ),
        # Partial: a deployment has no receipt until its push is sent, and bulk creation skips the index.
        sa.Index(
            "ix_deployment_receipt",
            "receipt_id",
            postgresql_where=sa.text("receipt_id IS NOT NULL"),
            sqlite_where=sa.text("receipt_id IS NOT NULL"),
        ),
    )

    id: str = Field(sa_type=ID, primary_key=True)
    organization_id: str = Field(sa_type=ORG_ID)
    device_id: str = Field(sa_type=ID)
    kind: Kind = Field(sa_type=str_enum(Kind))
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    urgent: bool = False
    status: Status = Field(default=Status.queued, sa_type=str_enum(Status))
    previous_status: Status | None = Field(default=None, sa_type=str_enum(Status))
    attempt_count: int = 0
    postpone_count: int = 0
    next_attempt_at: datetime | None = _ts()
    hold_reason: str | None = Field(default=None, sa_type=sa.String(200))
    error_code: str | None = Field(default=None, sa_type=sa.String(64))
    error_message: str | None = Field(default=None, sa_type=sa.Text)
    error_detail: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    last_device_reason: str | None = Field(default=None, sa_type=sa.Text)
    # When the device sent the last report that moved this deployment: an older one that arrives later is
    # refused, so that reports reordered on their way never move a deployment back.
    last_report_at: datetime | None = _ts()
    receipt_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    rollout_id: str | None = Field(default=None, sa_type=ID)
    created_at: datetime = _created()
    updated_at: datetime = _created()
    enqueued_at: datetime | None = _ts()
    pushed_at: datetime | None = _ts()
    fetched_at: datetime | None = _ts()
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()


class DeploymentEvent(SQLModel, table=True):
    """Append-only history of transitions, written in the transaction of the transition it records.
    Creation is not a transition: the deployment's `created_at` records it."""

    __tablename__ = "deployment_event"
    __table_args__ = (sa.Index("ix_deployment_event_deployment", "deployment_id", "id"),)

    id: int | None = Field(default=None, sa_type=BIGINT_PK, primary_key=True)
    deployment_id: str = Field(sa_type=ID)
    from_status: Status | None = Field(default=None, sa_type=str_enum(Status))
    to_status: Status = Field(sa_type=str_enum(Status))
    at: datetime = _created()
    actor: Actor = Field(sa_type=str_enum(Actor, 16))
    detail: dict[str, Any] | None = Field(default=None, sa_type=JSON)


class PushAttempt(SQLModel, table=True):
    """A push for a deployment that the provider did not accept: its answer, and when the deployment goes
    again (None: it does not). Accepted pushes are in `push_receipt`. Written with the answers of the chunk,
    one row per deployment and claim (`at`, the claim's time), and purged with the deployment."""

    __tablename__ = "push_attempt"

    deployment_id: str = Field(sa_type=ID, primary_key=True)
    at: datetime = Field(sa_type=UTCDateTime, primary_key=True)
    provider: Provider = Field(sa_type=str_enum(Provider))
    outcome: str = Field(sa_type=sa.String(32))  # the provider answer's scope: transient, credential, …
    status: int | None = None  # the HTTP status, when an answer came
    reason: str | None = Field(default=None, sa_type=sa.String(200))
    next_attempt_at: datetime | None = _ts()


class WatchedCertificate(SQLModel, table=True):
    """A certificate beyond the push credentials whose expiry would stop mdmq: a PEM file, a TLS endpoint."""

    __tablename__ = "watched_certificate"
    __table_args__ = (sa.UniqueConstraint("source", "target"),)

    id: int | None = Field(default=None, sa_type=BIGINT_PK, primary_key=True)
    source: CertificateSource = Field(sa_type=str_enum(CertificateSource))
    target: str = Field(sa_type=sa.String(512))  # a path, or host:port
    subject: str | None = Field(default=None, sa_type=sa.Text)
    not_after: datetime | None = _ts()
    last_checked_at: datetime | None = _ts()
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    alerted_days: int | None = None  # as on PushCredential: the last threshold alerted
    created_at: datetime = _created()


class SchedulerLease(SQLModel, table=True):
    """Which scheduler instance leads, until when. One row per lease name."""

    __tablename__ = "scheduler_lease"

    name: str = Field(sa_type=sa.String(64), primary_key=True)
    holder: str = Field(sa_type=sa.String(128))
    acquired_at: datetime = _created()
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


class SchedulerRun(SQLModel, table=True):
    """One run of one scheduler job: by which scheduler, when, how it ended and how much it did. The last
    successful run of each job is its health; the retention purge keeps a few days of them."""

    __tablename__ = "scheduler_run"
    __table_args__ = (sa.Index("ix_scheduler_run_job_started", "job", "started_at"),)

    id: int | None = Field(default=None, sa_type=BIGINT_PK, primary_key=True)
    job: str = Field(sa_type=sa.String(64))
    holder: str = Field(sa_type=sa.String(128))
    started_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    finished_at: datetime | None = _ts()
    ok: bool | None = None
    work: int | None = None  # rows the run moved, enqueued or deleted
    error: str | None = Field(default=None, sa_type=sa.Text)


class ApiToken(SQLModel, table=True):
    """A bearer token of the HTTP API: an organization, permissions and an expiry. Only the token's SHA-256
    is stored; the token itself is shown once, when it is created."""

    __tablename__ = "api_token"

    id: str = Field(sa_type=ID, primary_key=True)
    organization_id: str = Field(sa_type=ORG_ID, foreign_key="organization.id")
    token_hash: str = Field(sa_type=sa.String(64), unique=True)
    permissions: list[str] = Field(default_factory=list, sa_type=JSON)
    created_at: datetime = _created()
    revoked_at: datetime | None = _ts()
    # None only on a row the release before expiries wrote: models/store/tokens.py gives it one.
    expires_at: datetime | None = _ts()
    last_used_at: datetime | None = _ts()  # to the minute: not a write on every request
    legacy: bool | None = None  # created before tokens expired: its expiry was given by the upgrade


class IdempotencyKey(SQLModel, table=True):
    """A create request's `Idempotency-Key`, per organization: the request it was first sent with (a hash)
    and, once that request succeeded, its answer, which a retry with the same key and body gets again.
    `claim` names the request that holds the key until `locked_until`; the answer is written in the
    transaction of the work it answers, so a key without one stands for work that did not commit."""

    __tablename__ = "idempotency_key"
    __table_args__ = (sa.Index("ix_idempotency_key_expires", "expires_at"),)

    organization_id: str = Field(sa_type=ORG_ID, primary_key=True)
    key: str = Field(sa_type=sa.String(255), primary_key=True)
    request_hash: str = Field(sa_type=sa.String(64))
    claim: str = Field(sa_type=sa.String(32))
    locked_until: datetime = Field(sa_type=UTCDateTime, nullable=False)
    answer_status: int | None = None
    answer: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    created_at: datetime = _created()
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


class UnsentCreate(SQLModel, table=True):
    """A create whose dispatch messages may not have reached the broker yet: written in the transaction that
    creates the deployments (written as enqueued already), deleted once their messages went out. One left
    behind past the relay's grace (the process died between commit and send) hands its deployments to the
    relay. Its deployments are the id run `first_id` … of `count` ids (`models.ids.id_run`)."""

    __tablename__ = "unsent_create"
    __table_args__ = (sa.Index("ix_unsent_create_created", "created_at"),)

    id: int | None = Field(default=None, sa_type=BIGINT_PK, primary_key=True)
    organization_id: str = Field(sa_type=ORG_ID)
    first_id: str = Field(sa_type=ID)
    count: int
    created_at: datetime = _created()


def table_of(model: type[SQLModel]) -> sa.Table:
    """The model's Core table, for set-based statements: the store's, and tests that arrange rows."""
    table = model.__table__  # type: ignore[attr-defined]  # SQLModel sets it on table=True models, untyped
    assert isinstance(table, sa.Table)
    return table
