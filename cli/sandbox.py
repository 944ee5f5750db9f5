"""`mdmq sandbox`: the push emulators until stopped; `fleet` writes a simulated fleet's device file and
`devices` plays its devices checking in against a running sandbox and mdmq's API.

The sandbox is a distribution of its own, which a production install does not have: each command imports it
only when it runs, and says so when it is missing (exit 69).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from cli.demo import without_sandbox
from cli.output import fail
from config import load_settings
from config.logging import configure_logging

EXIT_USAGE = 64

sandbox = typer.Typer(
    help="The APNs, FCM and AOSP emulators (alone: serve them), and a simulated fleet to drive through them."
)


@sandbox.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    *,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    apns_port: Annotated[int, typer.Option(help="APNs production emulator port (0: any free port).")] = 2197,
    fcm_port: Annotated[int, typer.Option(help="FCM emulator port (0: any free port).")] = 2198,
    aosp_port: Annotated[
        int, typer.Option(help="AOSP (Pushy-style) emulator port (0: any free port).")
    ] = 2199,
    tls: Annotated[
        bool,
        typer.Option("--tls", help="HTTP/2 over TLS with a throw-away CA; issues an MDM push certificate."),
    ] = False,
    apns_sandbox_port: Annotated[
        int, typer.Option(help="APNs development (sandbox) emulator port (0: any).")
    ] = 2196,
    control_port: Annotated[
        int | None,
        typer.Option(
            help="Serve the control route here too (0: any free port): `mdmq sandbox devices` reads it."
        ),
    ] = None,
    files: Annotated[
        Path | None,
        typer.Option(
            "--files",
            help="Write here the MDMQ_ settings that point mdmq at the emulators (`env`) and a credential "
            "per provider to upload (`apns.pem` with --tls, `fcm.json`, `aosp.key`).",
        ),
    ] = None,
) -> None:
    """Run the APNs, FCM and AOSP emulators until stopped. They refuse what the real services refuse.

    APNs: any hex token is a live device, except those starting with
    deaddead (410 Unregistered), eeeeeeee (400 BadDeviceToken: other environment)
    or 77777777 (400 DeviceTokenNotForTopic). MDM pushes need --tls and the
    push certificate it prints. FCM and AOSP: see docs/sandbox.md.
    """
    if ctx.invoked_subcommand is not None:
        return
    try:
        from sandbox import serve_forever
    except ModuleNotFoundError as e:
        without_sandbox("sandbox", e)
    configure_logging(level=load_settings().log_level)
    serve_forever(
        host,
        apns_port,
        fcm_port,
        aosp_port,
        tls,
        apns_sandbox_port=apns_sandbox_port,
        control_port=control_port,
        files=files,
    )


@sandbox.command("fleet")
def fleet(
    *,
    devices: Annotated[int, typer.Option("--devices", min=1, max=1_000_000, help="Simulated devices.")],
    seed: Annotated[int, typer.Option(help="Seed of the devices, their tokens and behaviours.")] = 7,
    push_certificate: Annotated[
        Path | None,
        typer.Option(
            "--push-certificate",
            help="The APNs push certificate the organization uploads (`apns.pem`): Apple devices enroll "
            "with its topic. Without: the sandbox fleet's default topic.",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="The JSON Lines file to write (default: stdout).")
    ] = None,
) -> None:
    """Write a simulated fleet as a device file for `mdmq devices import`: tokens the sandbox takes, each
    device's behaviour as its label `behaviour:<name>` (most succeed, some report errors)."""
    try:
        from sandbox.fleet import APNS_TOPIC
        from sandbox.operator_fleet import certificate_topic, fleet_rows
    except ModuleNotFoundError as e:
        without_sandbox("sandbox fleet", e)
    topic = APNS_TOPIC
    if push_certificate is not None:
        try:
            topic = certificate_topic(push_certificate.read_bytes())
        except (OSError, ValueError) as e:
            fail(f"--push-certificate {push_certificate}: {e}", EXIT_USAGE)
    lines = (
        json.dumps(row, separators=(",", ":")) + "\n"
        for row in fleet_rows(devices=devices, seed=seed, topic=topic)
    )
    if out is None:
        sys.stdout.writelines(lines)
        return
    with out.open("w", encoding="utf-8") as handle:
        handle.writelines(lines)
    typer.echo(f"wrote {devices:,} device(s) to {out}", err=True)


@sandbox.command("devices")
def devices(
    *,
    api: Annotated[str, typer.Option("--api", help="mdmq's API, e.g. http://127.0.0.1:8000.")],
    token: Annotated[
        str, typer.Option("--token", help="A token with mdm.deployment.get, mdm.device.report.")
    ],
    org: Annotated[str, typer.Option("--org", help="The organization the fleet is enrolled in.")],
    fleet_file: Annotated[Path, typer.Option("--fleet", help="The device file `mdmq sandbox fleet` wrote.")],
    control: Annotated[
        str, typer.Option("--control", help="The sandbox's control route (`mdmq sandbox --control-port`).")
    ] = "http://127.0.0.1:2195",
    threads: Annotated[int, typer.Option(min=1, max=64, help="Devices checking in at once.")] = 8,
) -> None:
    """Play the fleet's devices until stopped: each device the sandbox delivers a push to asks the API for
    its Queued deployments and reports on them as its behaviour dictates, as an MDM check-in server relays
    a device's check-in."""
    try:
        from sandbox.operator_fleet import SimulatedDevices, read_fleet
    except ModuleNotFoundError as e:
        without_sandbox("sandbox devices", e)
    configure_logging(level=load_settings().log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is no operator's reading
    try:
        known = read_fleet(fleet_file)
    except (OSError, ValueError, KeyError) as e:
        fail(f"--fleet {fleet_file}: cannot be read ({type(e).__name__})", EXIT_USAGE)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    typer.echo(f"{len(known):,} device(s) of {org} checking in when pushed; Ctrl-C to stop", err=True)
    player = SimulatedDevices(
        api=api, token=token, organization_id=org, control=control, fleet=known, threads=threads
    )
    tally = player.run(stop)
    typer.echo(
        f"{tally.check_ins:,} check-in(s), {tally.reports:,} report(s) ({tally.refused:,} refused), "
        f"{tally.failures:,} failed check-in(s)",
        err=True,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(sandbox, name="sandbox")
