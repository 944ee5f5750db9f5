"""`mdmq rollouts create`: deployments of one kind for an organization's enrolled devices, or those a device
file lists, created and enqueued as the API's create is (`Actors.create`), one rollout per 10,000 devices.

Exit codes: 0 created, 1 no device to deploy to, 2 configuration, 3 the database refused, 64 usage (a
malformed organization id or payload, an unreadable file, a device the organization does not have).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.output import console, emit_json, fail
from config import load_settings
from models.ids import is_organization_id
from models.statuses import Kind
from models.store import NewDeployment
from models.store.deployments import UnknownDevices
from models.store.enrollment import DeviceFilter, list_devices
from workers.actors import declare_actors
from workers.app import App

EXIT_NOTHING = 1
EXIT_USAGE = 64
PER_ROLLOUT = 10_000  # as one API request: a rollout is what one create makes
PAGE = 10_000


def create(
    *,
    org: Annotated[str, typer.Option("--org", help="The organization whose devices get the deployments.")],
    kind: Annotated[Kind, typer.Option("--kind", help="profile, app, security_action or message.")],
    every: Annotated[bool, typer.Option("--all", help="Every enrolled device of the organization.")] = False,
    devices: Annotated[
        Path | None,
        typer.Option("--devices", help="Only these: a device file (JSON Lines or CSV with an id column)."),
    ] = None,
    urgent: Annotated[bool, typer.Option("--urgent", help="On the urgent queue.")] = False,
    payload: Annotated[
        str, typer.Option("--payload", help="The deployments' payload, a JSON object.")
    ] = "{}",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")] = False,
) -> None:
    """Create a deployment of KIND for each device (--all, or --devices FILE) and enqueue them: one rollout
    per 10,000 devices, as one create request of the API makes. Prints each rollout's id, to follow with
    `mdmq rollouts show ID --watch`."""
    if not is_organization_id(org):
        fail(f"--org {org!r} is not an organization id (24 hex, or 3+ letters, digits, -)", EXIT_USAGE)
    if every == (devices is not None):
        fail("give --all or --devices FILE, one of them", EXIT_USAGE)
    body = _payload(payload)
    app = App(load_settings())
    try:
        ids = _listed(devices) if devices is not None else _enrolled(app, org)
        if not ids:
            fail(f"no enrolled device to deploy to in {org}", EXIT_NOTHING)
        actors = declare_actors(app)
        created = []
        for start in range(0, len(ids), PER_ROLLOUT):
            chunk = ids[start : start + PER_ROLLOUT]
            wanted = [NewDeployment(device_id, kind, body, urgent) for device_id in chunk]
            try:
                made = actors.create(org, wanted, created_by="cli")
            except UnknownDevices as e:
                fail(f"not devices of {org}: {', '.join(e.device_ids[:10])}", EXIT_USAGE)
            created.append({"id": made.rollout_id, "total": len(made.ids)})
    finally:
        app.close()
    if as_json:
        emit_json({"rollouts": created, "deployments": sum(r["total"] for r in created)})
        return
    for r in created:
        console.print(f"rollout {r['id']}: {r['total']:,} {kind.value} deployment(s)")


def _payload(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        fail("--payload is not JSON", EXIT_USAGE)
    if not isinstance(body, dict):
        fail("--payload is not a JSON object", EXIT_USAGE)
    return body


def _enrolled(app: App, organization_id: str) -> list[str]:
    """Every enrolled device's id, page by page in id order."""
    ids: list[str] = []
    after = None
    while True:
        with app.session() as s:
            page = list_devices(
                s, organization_id=organization_id, where=DeviceFilter(), after=after, limit=PAGE
            )
        ids += [d.id for d in page]
        if len(page) < PAGE:
            return ids
        after = page[-1].id


def _listed(file: Path) -> list[str]:
    """The ids of a device file, once each, in the file's order."""
    try:
        return list(dict.fromkeys(_ids(file)))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        fail(f"--devices {file}: cannot be read ({type(e).__name__})", EXIT_USAGE)


def _ids(file: Path) -> Iterator[str]:
    with file.open(encoding="utf-8", newline="") as handle:
        if file.suffix.lower() == ".csv":
            yield from (row["id"] for row in csv.DictReader(handle))
            return
        yield from (json.loads(line)["id"] for line in handle if line.strip())


def register(rollouts: typer.Typer) -> None:
    rollouts.command("create")(create)
