# mypy: ignore-errors
# ruff: noqa: I001  (config.app is the previous release's module: not one of this tree's first-party modules)
"""Worker work done by the PREVIOUS release's code: run as a script, with the previous release's tree first on
PYTHONPATH (test_previous_release.py does that), against a database the current code has migrated.

It writes against the previous release's API, not the current one: when the release recorded in
previous_release.txt moves forward, this script follows that release's API. It prints one JSON line: where
its modules came from, and the ids it created.

Usage: python previous_release_worker.py DATABASE_URL
"""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import dramatiq
import sandbox
import workers
from cli.demo import register_credentials, store_credentials
from config.app import App
from config.settings import Settings
from models.enums import Platform
from models.statuses import Kind, Status
from models.store import NewDeployment, ensure_organization, get_deployment
from models.store.devices import NewDevice, add_devices
from models.types import utcnow
from sandbox import DeviceRegistry, SandboxThread
from sandbox.fleet import APNS_TOPIC, FCM_PROJECT_ID
from sandbox.tls import ServerTls
from workers.actors import declare_actors
from workers.broker import BULK_QUEUE, URGENT_QUEUE

ORGANIZATION = "previous-release"


def main(database_url: str) -> None:
    registry = DeviceRegistry()
    keys = register_credentials(registry)  # before the emulators start: they read the push CA then
    tokens = {
        Platform.ios: secrets.token_hex(32),
        # An FCM registration token's shape: an instance id, ':APA91b', and 134 base64url characters.
        Platform.android: f"{secrets.token_urlsafe(16)[:22]}:APA91b{secrets.token_urlsafe(101)[:134]}",
        Platform.aosp: secrets.token_hex(16),
    }
    registry.add_apns_device(tokens[Platform.ios], topic=APNS_TOPIC, environment="development")
    registry.add_fcm_device(tokens[Platform.android], project_id=FCM_PROJECT_ID)
    registry.add_aosp_device(tokens[Platform.aosp])
    delivered: list[str] = []
    registry.subscribe(lambda delivery: delivered.append(delivery.token))
    tls = ServerTls.generate()
    with tempfile.TemporaryDirectory() as directory, SandboxThread(registry, tls=tls) as emulators:
        trust = Path(directory) / "emulators-ca.pem"
        trust.write_bytes(tls.ca_pem)
        settings = Settings(
            database_url=database_url,
            broker_url="stub://",
            push_ca_file=str(trust),
            apns_url=emulators.apns_url,
            apns_sandbox_url=emulators.apns_sandbox_url,
            fcm_url=emulators.fcm_url,
            fcm_token_url=f"{emulators.fcm_url}/token",
            aosp_url=emulators.aosp_url,
        )
        app = App(settings)
        actors = declare_actors(app)
        worker = dramatiq.Worker(app.broker, worker_threads=2, worker_timeout=100)
        worker.start()
        try:
            with app.session() as s:
                ensure_organization(s, organization_id=ORGANIZATION)
                store_credentials(s, ORGANIZATION, keys)
                devices = add_devices(
                    s,
                    organization_id=ORGANIZATION,
                    devices=[
                        NewDevice(platform, token, push_magic="magic" if platform is Platform.ios else None)
                        for platform, token in tokens.items()
                    ],
                )
            # Created and enqueued; the worker pushes each device through its emulator.
            deployments = actors.create(ORGANIZATION, [NewDeployment(d, Kind.app) for d in devices])
            _settle(app)
            with app.session() as s:
                statuses = [get_deployment(s, deployment_id=i).status for i in deployments]
            assert statuses == [Status.queued] * 3, f"pushed and accepted, waiting for check-in: {statuses}"
            assert sorted(delivered) == sorted(tokens.values()), "each device got its push"

            # The first device checks in and installs the app; its reports go through the report actor.
            started = utcnow()
            for i, report in enumerate(("fetched", "processing", "acknowledged")):
                at = started + timedelta(seconds=i)
                actors.record_report.send(deployments[0], report, None, None, at.isoformat())
            _settle(app)
            # An operator cancels the last one.
            actors.cancel.send([deployments[2]])
            _settle(app)
            with app.session() as s:
                statuses = [get_deployment(s, deployment_id=i).status for i in deployments]
            assert statuses == [Status.completed, Status.queued, Status.cancelled], statuses
        finally:
            worker.stop()
            app.close()
    print(
        json.dumps(
            {
                "modules": {"workers": workers.__file__, "sandbox": sandbox.__file__},
                "organization_id": ORGANIZATION,
                "devices": devices,
                "deployments": deployments,
            }
        )
    )


def _settle(app: App) -> None:
    for queue in (URGENT_QUEUE, BULK_QUEUE):
        app.broker.join(queue, timeout=20_000)


if __name__ == "__main__":
    main(sys.argv[1])
