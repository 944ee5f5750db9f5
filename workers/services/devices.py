"""Enrolling devices from rows as the API and `mdmq devices import` receive them: each row checked on its
own (a bad one is refused with its index, field and reason, and the good ones are stored), then stored
set-based by the store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.database import Session
from models.enums import PLATFORM_PROVIDER, Actor, Platform, Provider
from models.ids import ID_PATTERN
from models.json_values import first_unstorable, text_problem
from models.push_tokens import MAX_TOKEN_CHARS, token_problem
from models.store.enrollment import Enrolled, Enrollment, EnrollRefusal, enroll_devices
from workers.providers.credentials import MDM_TOPIC_PREFIX

MAX_PER_BATCH = 10_000
# Apple's push magic is a UUID (36 characters); its column holds it sealed, which more than doubles it.
MAX_PUSH_MAGIC_CHARS = 128
APPLE = frozenset({Platform.ios, Platform.macos})
# Printable text: no C0 or C1 control character (a label is shown in lists and terminals).
Label = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")]


class DeviceFields(BaseModel):
    """What an enrollment gives: a token update carries the token, and for an Apple device its push magic
    and the topic it enrolled with (Apple's TokenUpdate check-in message carries all three)."""

    model_config = ConfigDict(extra="forbid")

    platform: Platform
    provider: Provider | None = Field(default=None, description="The platform's own when absent.")
    token: str = Field(min_length=1, max_length=MAX_TOKEN_CHARS, description="Never shown again.")
    pushMagic: str | None = Field(
        default=None, min_length=1, max_length=MAX_PUSH_MAGIC_CHARS, description="Never shown again."
    )
    topic: str | None = Field(default=None, max_length=255, pattern=r"^[A-Za-z0-9._-]+$")
    labels: list[Label] | None = Field(default=None, max_length=50)


class DeviceRow(DeviceFields):
    """One row of a batch or an import file: the device's id, and its fields."""

    id: str = Field(pattern=ID_PATTERN.pattern)


@dataclass(frozen=True)
class RowProblem:
    """A row refused: its index in the batch, its id when it had a readable one, the field and why."""

    index: int
    device_id: str | None
    field: str
    reason: str


@dataclass(frozen=True)
class Imported:
    enrolled: Enrolled
    problems: tuple[RowProblem, ...]  # the rows refused, in index order: malformed ones and the store's

    @property
    def stored(self) -> int:
        return len(self.enrolled.created) + len(self.enrolled.updated)


def enrollment(device_id: str, fields: DeviceFields) -> Enrollment | tuple[str, str]:
    """The enrollment of these fields, or (field, reason) for the first that cannot be."""
    provider = fields.provider or PLATFORM_PROVIDER[fields.platform]
    if provider is not PLATFORM_PROVIDER[fields.platform]:
        expected = PLATFORM_PROVIDER[fields.platform].value
        return "provider", f"a {fields.platform.value} device is woken through {expected}"
    if (problem := token_problem(provider, fields.token)) is not None:
        return "token", problem
    if fields.platform in APPLE:
        if fields.pushMagic is None:
            return "pushMagic", "an Apple device's push magic is required: its wake-ups carry it"
        if fields.topic is None or not fields.topic.startswith(MDM_TOPIC_PREFIX):
            return "topic", f"an Apple device's MDM push topic is required, {MDM_TOPIC_PREFIX}…"
    else:
        for name in ("pushMagic", "topic"):
            if getattr(fields, name) is not None:
                return name, "only an Apple device has one"
    labels = tuple(dict.fromkeys(fields.labels)) if fields.labels is not None else None
    return Enrollment(
        device_id, fields.platform, provider, fields.token, fields.pushMagic, fields.topic, labels
    )


def parse_row(index: int, raw: Any) -> Enrollment | RowProblem:
    """One row of a batch: its enrollment, or the problem with it (never the value: it may be a secret). A
    value the database cannot store (NUL, a lone surrogate, NaN…) is refused as the API's strict JSON
    refuses it, for rows that did not come through the API (an import file)."""
    device_id = raw.get("id") if isinstance(raw, Mapping) and isinstance(raw.get("id"), str) else None
    if device_id is not None and text_problem(device_id) is not None:
        device_id = None  # not shown back
    if (unstorable := first_unstorable(raw)) is not None:
        return RowProblem(index, device_id, _field_of(unstorable.pointer), unstorable.reason)
    try:
        row = DeviceRow.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ())) or "row"
        return RowProblem(index, device_id, field, first.get("msg", "invalid"))
    result = enrollment(row.id, row)
    if isinstance(result, Enrollment):
        return result
    return RowProblem(index, row.id, *result)


def _field_of(pointer: str) -> str:
    """`labels.0` for the RFC 6901 pointer `/labels/0`, as a validation error names a field; `row` for the
    row itself."""
    parts = [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]
    return ".".join(parts)[:100] or "row"


def import_devices(
    session: Session, *, organization_id: str, rows: Sequence[Any], actor: Actor = Actor.api
) -> Imported:
    """Check every row, and enroll the good ones in one set-based store call. The caller commits, then
    enqueues `enrolled.release`."""
    parsed = [parse_row(index, raw) for index, raw in enumerate(rows)]
    good = [(i, p) for i, p in enumerate(parsed) if isinstance(p, Enrollment)]
    problems = [p for p in parsed if isinstance(p, RowProblem)]
    good_rows = [p for _, p in good]
    enrolled = enroll_devices(session, organization_id=organization_id, devices=good_rows, actor=actor)
    for refused in enrolled.refused:  # indices of the good rows' list: back to the batch's
        field = "topic" if refused.reason is EnrollRefusal.topic_change else "id"
        reason = f"{refused.reason.value}: {refused.message}"
        problems.append(RowProblem(good[refused.index][0], refused.device_id, field, reason))
    return Imported(enrolled, tuple(sorted(problems, key=lambda p: p.index)))
