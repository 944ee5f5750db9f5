"""The one `Settings` class: every knob of mdmq, read from `MDMQ_*` environment variables."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import MdmqError

ENV_PREFIX = "MDMQ_"

_DATABASE_SCHEMES = {
    "sqlite": "sqlite",
    "postgresql+psycopg": "postgresql+psycopg",
    # Ops teams paste libpq-style URLs; they mean psycopg 3, the only driver we ship.
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
}
_BROKER_SCHEMES = ("stub", "redis", "rediss", "amqp", "amqps")


def redact_url(url: str) -> str:
    """`scheme://user:secret@host/db` → `scheme://user:***@host/db`: errors must not leak a password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.partition(':')[0]}:***@{location}"


class Environment(StrEnum):
    development = "development"
    production = "production"


class LogFormat(StrEnum):
    auto = "auto"
    text = "text"
    json = "json"


REDELIVER_AFTER_S = 600.0


class SettingsError(MdmqError):
    """The configuration is not valid: `variable` names the environment variable to fix."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


class Settings(BaseSettings):
    """mdmq's configuration. The defaults are the embedded mode: SQLite, an in-process broker, the sandbox."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    environment: Environment = Environment.development
    database_url: str = "sqlite:///mdmq.db"
    broker_url: str = "stub://"
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.auto
    sentry_dsn: str | None = None

    database_pool_size: int = Field(default=5, ge=1, le=200)
    # How long `mdmq api`, `mdmq worker` and `mdmq scheduler` wait at start for the release step to bring the
    # database to the newest schema.
    schema_wait_s: float = Field(default=120.0, ge=0)
    # Rows per statement when deployments are created in bulk.
    bulk_insert_batch: int = Field(default=5_000, ge=100, le=100_000)
    # Deployments per dispatch message.
    dispatch_chunk_size: int = Field(default=250, ge=1, le=5_000)
    # The longest an idle worker process sleeps between looks at a Redis queue (Dramatiq's worker timeout,
    # 1,000 ms by default): what a message waits at worst before an idle worker takes it.
    worker_poll_ms: int = Field(default=250, ge=10, le=10_000)
    # Threads of the urgent lane for each of `mdmq worker --processes`, all in one worker process more that it
    # starts beside them (those then take the bulk queue alone): urgent messages (locks, wipes, reports, a
    # chunk's answers) never wait for a thread, or for the interpreter lock, of a process pushing a rollout
    # (`workers.urgent_lane`). 0: no such process; every thread takes both queues, urgent first.
    worker_urgent_threads: int = Field(default=2, ge=0, le=64)
    # The longest the urgent lane's process, idle, sleeps between looks at the urgent queue on Redis: what a
    # lock waits at worst before it is taken.
    worker_urgent_poll_ms: int = Field(default=50, ge=10, le=10_000)
    # How much lower the bulk lane's processes run than the urgent lane's (their niceness, 0-19; only with
    # an urgent lane): on a host whose cores the bulk processes keep busy, a lock's few milliseconds of work
    # then wait for no time slice of theirs, and the API and a database on the same host go first too.
    worker_bulk_nice: int = Field(default=5, ge=0, le=19)
    # An organization paced at up to this many wake-ups a second (`wake_rate_per_s`) has its chunks served
    # by the urgent lane's process, below locks and wipes, as it puts them: the bulk processes, niced and
    # busy with other rollouts, let a paced chunk wait up to half a second between its take and its pushes,
    # and at the end of such a rollout the late ones went out with the next, above the rate. Faster paced
    # organizations are served by the bulk lane as any other (a lane of a few threads would fall behind
    # them, and locks behind it). 0: every organization on the bulk lane.
    paced_lane_max_rate: float = Field(default=200.0, ge=0)
    # True in the urgent lane's process only: `mdmq worker` sets it there (`workers.launch`).
    worker_urgent_lane: bool = False
    # The Redis broker: its key prefix (two mdmq installations may share one Redis), and how soon the
    # messages a dead worker process had taken go back on their queue. A process that has not spoken to
    # Redis for `broker_heartbeat_timeout_s` is dead (a live one speaks every `worker_poll_ms` at most, busy
    # or idle); its messages are put back by the next broker call that does maintenance on their queue, one
    # call in a million / `broker_maintenance_per_million`. Redelivery comes about the timeout after the
    # death, plus a few seconds; the messages show meanwhile in `mdmq_queue_messages{state="orphaned"}`.
    # RabbitMQ puts them back the moment the dead process's connection closes: neither setting applies.
    broker_namespace: str = Field(default="mdmq", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    broker_heartbeat_timeout_s: float = Field(default=30.0, ge=1, le=3_600)
    broker_maintenance_per_million: int = Field(default=50_000, ge=1, le=1_000_000)
    # Queued, and still not on the broker this long after its commit: lost on the way; the relay sends it.
    relay_grace_s: float = Field(default=30.0, gt=0)
    # On the broker, and still Queued with no push recorded this long after: the message was lost (a broker
    # restarted without its data, a worker killed mid-push); the re-push sweep takes the deployment again.
    # Longer than a message waits in the queue at the busiest, or a slow message is sent twice.
    redeliver_after_s: float = Field(default=REDELIVER_AFTER_S, gt=0)
    # An `Idempotency-Key` of a create is kept this long (Stripe keeps them 24 hours); the request that holds
    # one gives it up after `idempotency_lock_s` without an answer (its process died: a retry may take it).
    idempotency_key_ttl_s: float = Field(default=86_400.0, gt=0)
    idempotency_lock_s: float = Field(default=60.0, gt=0)
    # A device report sent (`reportedAt`) more than this ahead of the server's clock is refused; a smaller
    # lead is taken as sent now, so that a fast clock cannot make later reports look older.
    report_max_lead_s: float = Field(default=300.0, ge=0)
    # The scheduler: its leader lease, how often the sweeps run, when a deployment counts as stuck, and how
    # long terminal deployments (and their events) are kept.
    scheduler_lease_s: float = Field(default=15.0, ge=1)
    sweep_interval_s: float = Field(default=10.0, gt=0)
    stuck_after_s: float = Field(default=3_600.0, gt=0)
    retention_days: float = Field(default=90.0, gt=0)
    # The certificate watch: alert thresholds in days, and certificates beyond the push credentials, both
    # comma-separated: PEM files, and TLS endpoints as host:port (the MDM server's own, the APNs host).
    cert_thresholds_days: str = "30,14,7,1"
    cert_watch_interval_s: float = Field(default=3_600.0, gt=0)
    # The safety valve (DESIGN §4.3): a credential's dead-token answers are judged on its last
    # `valve_window` answers; with at least min(`valve_min_answers`, its devices) of them, a share of
    # `valve_dead_share` or more is the organization's (held), less is the devices' (tokens invalidated).
    valve_window: int = Field(default=200, ge=10, le=500)
    valve_min_answers: int = Field(default=20, ge=1)
    valve_dead_share: float = Field(default=0.2, gt=0, le=1)
    # A held organization is tried again with one push this long after the hold, then twice as long each
    # time, at most `hold_probe_max_s`: a fix made elsewhere releases it.
    hold_probe_first_s: float = Field(default=60.0, gt=0)
    hold_probe_max_s: float = Field(default=3_600.0, gt=0)
    # How often each AOSP push with devices still pending is polled for its delivery status.
    poll_interval_s: float = Field(default=60.0, gt=0)
    watch_files: str = ""
    watch_endpoints: str = ""

    # Where Prometheus scrapes each process, never on the API's port: the API's exposition server, the
    # worker's (all its processes, through prometheus_client's multiprocess directory, which `mdmq worker`
    # empties at start) and the scheduler's. Loopback unless set: the deploy files bind them inside their
    # private network.
    # The largest request body the API reads; a larger one is answered 413 before it is read.
    api_max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # An uploaded RSA key's costly check runs in this many processes of the API (started at the first
    # upload); this many more uploads wait for one, and one beyond them is answered 503 with Retry-After.
    # Each waiting upload holds one of the 40 threads the blocking routes share: together at most 32.
    api_key_check_processes: int = Field(default=1, ge=1, le=8)
    api_key_check_queue: int = Field(default=8, ge=0, le=24)
    metrics_host: str = "127.0.0.1"
    api_metrics_port: int = Field(default=9190, ge=0, le=65_535)
    worker_metrics_port: int = Field(default=9191, ge=0, le=65_535)
    scheduler_metrics_port: int = Field(default=9192, ge=0, le=65_535)
    metrics_dir: str = ""  # empty: a directory under the system's temporary directory
    # Slow and abusive clients: a request's head must arrive within `api_header_timeout_s` of the connection
    # (or of the previous answer on it), its body within `api_body_timeout_s` of its head; an idle
    # keep-alive connection is closed after `api_keep_alive_s`; beyond `api_max_connections` connections
    # in one process, requests are answered 503.
    api_header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    api_body_timeout_s: float = Field(default=10.0, gt=0, le=300)
    api_keep_alive_s: int = Field(default=5, ge=1, le=300)
    api_max_connections: int = Field(default=1_000, ge=1)
    # /docs and /openapi.json: on in development, off in production unless this turns them on.
    api_docs: bool | None = None
    # The operator's page (/ops): how long its sign-in lasts, and how often it refreshes itself. The token
    # behind a sign-in is checked on every request: revoking it signs the page out at once.
    ops_session_s: float = Field(default=8 * 3_600.0, ge=60, le=7 * 86_400)
    ops_refresh_s: float = Field(default=5.0, ge=1, le=300)

    # Secrets at rest (push credential material, push magic): AES-256 keys (32 bytes, url-safe base64), newest
    # first, comma-separated, or a file of them one a line. Production refuses to start without one;
    # development without one uses a key generated beside its SQLite file. `secret_plaintext_writes` keeps
    # writing plaintext (reading both) while a release that cannot decrypt still runs: docs/operations.md.
    secret_key_file: str | None = None
    secret_key: SecretStr | None = Field(default=None, validate_default=True)
    secret_plaintext_writes: bool = False

    # Push services: the real hosts unless set (the embedded mode and the tests point them at the sandbox).
    apns_url: str = "https://api.push.apple.com"
    apns_sandbox_url: str = "https://api.sandbox.push.apple.com"
    fcm_url: str = "https://fcm.googleapis.com"
    fcm_token_url: str = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL, not a secret)
    aosp_url: str = "https://api.pushy.me"
    # An extra CA to trust for the push services (a test emulator's); the system store otherwise.
    push_ca_file: str | None = None
    # A worker process keeps one provider per push credential it sends with (its credential and HTTP/2
    # connections). One unused for `provider_idle_s` is closed, once its pushes in flight are answered, and
    # built again by the next push: a process that has served 1,000 organizations holds only those active
    # lately. Not under 10 s: APNs treats rapid connection and disconnection as a denial-of-service attack
    # [A-SEND]. A provider opens at most `provider_max_connections` connections, the next only when every
    # open one has all its streams (200 each) in flight: 4 carry some 20,000 pushes/s at 40 ms latency.
    provider_idle_s: float = Field(default=300.0, ge=10)
    provider_max_connections: int = Field(default=4, ge=1, le=64)

    @field_validator("apns_url", "apns_sandbox_url", "fcm_url", "fcm_token_url", "aosp_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"expected https://HOST[:PORT] (or http:// for cleartext HTTP/2), got {url!r}")
        return url.rstrip("/")

    @field_validator("secret_key")
    @classmethod
    def _key_in_production(cls, key: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        missing = key is None and not info.data.get("secret_key_file")
        if missing and info.data.get("environment") is Environment.production:
            raise ValueError(
                "production needs a key to encrypt push credentials and push magic at rest: set "
                "MDMQ_SECRET_KEY (or MDMQ_SECRET_KEY_FILE); `mdmq secrets generate-key` makes one"
            )
        return key

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in _DATABASE_SCHEMES:
            raise ValueError(
                f"expected sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB, got {redact_url(url)!r}"
            )
        if not rest.strip("/") and scheme != "sqlite":
            raise ValueError(f"the URL names no host or database: {redact_url(url)!r}")
        return f"{_DATABASE_SCHEMES[scheme]}://{rest}"

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, url: str) -> str:
        scheme, sep, _ = url.partition("://")
        if not sep or scheme not in _BROKER_SCHEMES:
            raise ValueError(
                "expected stub://, redis://HOST:PORT/DB or amqp://USER:PASS@HOST:PORT/, "
                f"got {redact_url(url)!r}"
            )
        return url

    @field_validator("cert_thresholds_days")
    @classmethod
    def _thresholds(cls, value: str) -> str:
        try:
            days = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            days = []
        if not days or any(d <= 0 for d in days):
            raise ValueError(f"expected whole days above 0, comma-separated (30,14,7,1), got {value!r}")
        return value

    @property
    def thresholds_days(self) -> tuple[int, ...]:
        """The certificate watch's thresholds, largest first."""
        return tuple(
            sorted({int(part) for part in self.cert_thresholds_days.split(",") if part.strip()}, reverse=True)
        )

    @staticmethod
    def _items(value: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in value.split(",") if part.strip())

    @property
    def watched_files(self) -> tuple[str, ...]:
        return self._items(self.watch_files)

    @property
    def watched_endpoints(self) -> tuple[str, ...]:
        return self._items(self.watch_endpoints)

    @property
    def is_embedded(self) -> bool:
        """True when everything runs in one process: the demo and a first look."""
        return self.broker_url.startswith("stub://")

    @property
    def in_production(self) -> bool:
        return self.environment is Environment.production

    @property
    def serves_api_docs(self) -> bool:
        if self.api_docs is not None:
            return self.api_docs
        return self.environment is not Environment.production

    @property
    def json_logs(self) -> bool:
        if self.log_format is LogFormat.auto:
            return self.environment is Environment.production
        return self.log_format is LogFormat.json


def load_settings(**overrides: Any) -> Settings:
    """Read the environment into `Settings`, or raise `SettingsError` naming the first bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        error = e.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise SettingsError(ENV_PREFIX + field.upper(), message) from None
