"""Sentry for mdmq's processes, when `MDMQ_SENTRY_DSN` is set: Dramatiq's integration, and `scrub` on every
event so that no push token, push magic, key, API token or message argument ever leaves the process."""

from __future__ import annotations

import re
from typing import Any

from config.settings import Settings

FILTERED = "[Filtered]"

# Values that are secrets whatever key they sit under.
_SECRET_VALUES = re.compile(
    # A PEM key or certificate
    r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----.*?-----END [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----"
    r"|\b[0-9a-fA-F]{64}\b"  # an APNs device token
    r"|[A-Za-z0-9_-]{20,}:APA91b[A-Za-z0-9_-]{20,}"  # an FCM registration token
    r"|\b[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\b"  # Apple push magic
    r"|\bmdmq_[A-Za-z0-9_-]{20,}"  # an API token
    r"|\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*"  # a JWT (APNs provider token, OAuth)
    r"|\bya29\.[A-Za-z0-9_.-]+",  # a Google access token
    re.DOTALL,
)
# Keys whose values are secrets, or carry message arguments (device tokens, report payloads).
_SECRET_KEYS = re.compile(
    r"secret|token|magic|private|password|api_?key|authorization|cookie|credential|args|kwargs|data",
    re.IGNORECASE,
)


def init_sentry(settings: Settings, *, process: str, transport: Any = None) -> bool:
    """Start Sentry for this process (`worker`, `scheduler`, `api`); False when no DSN is configured.
    Call it before the broker is built: Dramatiq's integration adds its middleware to brokers built after.
    `transport`: the tests' capturing one."""
    if not settings.sentry_dsn:
        return False
    # Imported only here: Sentry's SDK and the HTTP clients it brings are some 6 MB of every worker
    # process's memory, for nothing when no DSN is set.
    import sentry_sdk
    from sentry_sdk.integrations.dramatiq import DramatiqIntegration

    sentry_sdk.init(
        transport=transport,
        dsn=settings.sentry_dsn,
        environment=settings.environment.value,
        server_name=process,
        integrations=[DramatiqIntegration()],
        include_local_variables=False,  # a frame's locals hold credentials and tokens
        before_send=scrub,
        before_send_transaction=scrub,
    )
    return True


def scrub(event: Any, hint: Any = None) -> Any:
    """The event with every secret-looking value and every message argument replaced by `[Filtered]`."""
    return _clean(event, key="")


def _clean(value: Any, *, key: str) -> Any:
    if key and _SECRET_KEYS.search(key) and key not in _SAFE_KEYS:
        return FILTERED if value not in (None, "", [], {}) else value
    if isinstance(value, dict):
        return {k: _clean(v, key=str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, key="") for v in value]
    if isinstance(value, str):
        return _SECRET_VALUES.sub(FILTERED, value)
    return value


# Sentry's own structure, which the key patterns above would otherwise blank.
_SAFE_KEYS = frozenset({"data_collection", "dramatiq_message_id"})
