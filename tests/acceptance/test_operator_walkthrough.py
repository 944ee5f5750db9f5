"""Issue 23's "Done when", as a new user does it, with the `mdmq` command for every step and real processes:
PostgreSQL (a database of the test's own), a Redis of the test's own, `mdmq sandbox` (the emulators and their
control route), `mdmq api`, `mdmq worker` and `mdmq scheduler`.

The user creates a token, uploads the sandbox's credentials, writes a fleet of 1,000 simulated devices and
enrolls it with one `mdmq devices import`, starts the devices checking in (`mdmq sandbox devices`), starts a
rollout to every device (`mdmq rollouts create --all`) and watches it until `mdmq rollouts show --watch`
ends by itself: each device's deployment in the status its behaviour dictates. Then Apple revokes the
organization's push certificate; a lock for one device is held, and `mdmq status` shows its failed push.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

import pytest
import requests

from models.secrets import KeyRing
from models.statuses import Kind
from sandbox.fleet import Behaviour, expected_status
from tests.helpers import answers, free_ports, run_mdmq, wait_until
from tests.services import OwnRedis, new_postgres_database

pytestmark = pytest.mark.timeout(600)
DEVICES = 1_000
ORG = "walkthrough"
PERMISSIONS = (
    "mdm.device.get", "mdm.device.manage", "mdm.device.report", "mdm.deployment.get",
    "mdm.deployment.create", "mdm.credential.manage",
)  # fmt: skip
WATCH_TIMEOUT_S = 300


@contextmanager
def running(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[str]]:
    """A process of the test's own, its output in `log`; stopped with SIGTERM at the end."""
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def mdmq_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "mdmq"), *args]


def sandbox_lines(stdout: IO[str]) -> dict[str, str]:
    """What `mdmq sandbox` announced, up to the line naming its operator files: the control route's URL and
    the files' directory."""
    announced: dict[str, str] = {}
    for line in stdout:
        if line.startswith("control "):
            announced["control"] = line.split()[1]
        if line.startswith("operator files: "):
            announced["files"] = line.removeprefix("operator files: ").strip()
            return announced
    raise AssertionError(f"mdmq sandbox ended before naming its files: {announced}")


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database of the test's own, with no tables: `mdmq db upgrade` makes them."""
    with new_postgres_database("mdmq_walkthrough") as url:
        yield url


def test_a_new_user_enrolls_a_fleet_follows_a_rollout_and_sees_failed_pushes(
    empty_database: str, tmp_path: Path
) -> None:
    api_port, api_metrics, worker_metrics, scheduler_metrics, redis_port = free_ports(5)
    with ExitStack() as stack:
        redis = stack.enter_context(OwnRedis(redis_port))
        sandbox = stack.enter_context(
            subprocess.Popen(
                mdmq_command(
                    "sandbox", "--tls", "--apns-port", "0", "--apns-sandbox-port", "0", "--fcm-port", "0",
                    "--aosp-port", "0", "--control-port", "0", "--files", str(tmp_path / "sandbox"),
                ),
                stdout=subprocess.PIPE,
                text=True,
            )
        )  # fmt: skip
        stack.callback(sandbox.send_signal, signal.SIGTERM)
        assert sandbox.stdout is not None
        announced = sandbox_lines(sandbox.stdout)
        files = Path(announced["files"])
        env = read_env(files / "env") | {
            "MDMQ_DATABASE_URL": empty_database,
            "MDMQ_BROKER_URL": redis.url,
            "MDMQ_SECRET_KEY": KeyRing.generate_key(),
            "MDMQ_METRICS_HOST": "127.0.0.1",
            "MDMQ_API_METRICS_PORT": str(api_metrics),
            "MDMQ_WORKER_METRICS_PORT": str(worker_metrics),
            "MDMQ_SCHEDULER_METRICS_PORT": str(scheduler_metrics),
            "MDMQ_METRICS_DIR": str(tmp_path / "worker-metrics"),
            "MDMQ_SWEEP_INTERVAL_S": "1",
        }

        def mdmq(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
            done = run_mdmq(*args, env=env, timeout_s=timeout_s)
            assert done.returncode == 0, f"mdmq {' '.join(args)}: {done.stderr}"
            return done

        mdmq("db", "upgrade")
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")} | env
        api = f"http://127.0.0.1:{api_port}"
        stack.enter_context(
            running(mdmq_command("api", "--port", str(api_port)), environment, tmp_path / "api.log")
        )
        stack.enter_context(
            running(
                mdmq_command("worker", "--processes", "1", "--threads", "8"),
                environment,
                tmp_path / "worker.log",
            )
        )
        stack.enter_context(running(mdmq_command("scheduler"), environment, tmp_path / "scheduler.log"))

        permissions = [option for p in PERMISSIONS for option in ("--permission", p)]
        token = json.loads(
            mdmq("token", "create", "--org", ORG, "--create-org", *permissions, "--json").stdout
        )
        for provider, name in (("apns", "apns.pem"), ("fcm", "fcm.json"), ("aosp", "aosp.key")):
            mdmq("credentials", "put", "--org", ORG, "--provider", provider, "--file", str(files / name))

        fleet = tmp_path / "fleet.jsonl"
        mdmq("sandbox", "fleet", "--devices", str(DEVICES), "--push-certificate", str(files / "apns.pem"),
             "--out", str(fleet))  # fmt: skip
        imported = json.loads(mdmq("devices", "import", str(fleet), "--org", ORG, "--json").stdout)
        assert (imported["created"], imported["refused"]) == (DEVICES, [])

        wait_until(lambda: answers(api + "/healthz"), 120, "the API")
        created = mdmq("rollouts", "create", "--org", ORG, "--kind", "profile", "--all",
                       "--payload", '{"profile": "com.example.wifi"}', "--json")  # fmt: skip
        [rollout] = json.loads(created.stdout)["rollouts"]
        assert rollout["total"] == DEVICES
        # No device checks in yet: the rollout is in progress on the operator's page.
        operator = json.loads(
            mdmq("token", "create", "--org", "operators", "--create-org", "--permission", "mdm.ops.view",
                 "--json").stdout
        )  # fmt: skip
        page = requests.Session()
        assert page.post(api + "/ops/sign-in", data={"token": operator["token"]}, timeout=30).ok
        assert rollout["id"] in _rollouts_on_the_page(page, api)

        # The devices check in, woken by the pushes delivered so far and from now on.
        stack.enter_context(
            running(
                mdmq_command(
                    "sandbox", "devices", "--api", api, "--token", token["token"], "--org", ORG,
                    "--fleet", str(fleet), "--control", announced["control"],
                ),
                environment,
                tmp_path / "devices.log",
            )
        )  # fmt: skip
        watched = mdmq("rollouts", "show", rollout["id"], "--watch", "--json", "--interval", "1",
                       timeout_s=WATCH_TIMEOUT_S)  # fmt: skip
        last = json.loads(watched.stdout.splitlines()[-1])
        assert last["counts"] == _expected_counts(fleet), last
        assert rollout["id"] not in _rollouts_on_the_page(page, api), "done: no longer in progress"

        _a_revoked_certificate_shows_in_history(mdmq, announced["control"], files, fleet, tmp_path)


def _rollouts_on_the_page(page: requests.Session, api: str) -> dict[str, int]:
    """The rollouts in progress on the operator's page (its figures, as the page shows them): id -> total."""
    figures = page.get(api + "/ops/figures", timeout=30)
    assert figures.status_code == 200, figures.text
    return {r["id"]: r["total"] for r in figures.json()["data"]["rollouts"]}


def _expected_counts(fleet: Path) -> dict[str, int]:
    behaviours = [
        Behaviour(json.loads(line)["labels"][0].removeprefix("behaviour:"))
        for line in fleet.read_text().splitlines()
    ]
    return dict(Counter(expected_status(b, Kind.profile).value for b in behaviours))


Mdmq = Callable[..., subprocess.CompletedProcess[str]]


def _a_revoked_certificate_shows_in_history(
    mdmq: Mdmq, control: str, files: Path, fleet: Path, tmp_path: Path
) -> None:
    revoked = requests.post(
        control + "/apns/certificates/revoke", data=(files / "apns.pem").read_bytes(), timeout=30
    )
    assert revoked.status_code == 200
    rows = [json.loads(line) for line in fleet.read_text().splitlines()]
    [iphone] = [r for r in rows if r["platform"] == "ios" and r["labels"] == ["behaviour:success"]][:1]
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(iphone) + "\n")
    created = mdmq("rollouts", "create", "--org", ORG, "--kind", "security_action", "--devices", str(one),
                   "--urgent", "--payload", '{"action": "lock"}', "--json")  # fmt: skip
    [rollout] = json.loads(created.stdout)["rollouts"]
    listed = json.loads(mdmq("deployments", "--org", ORG, "--kind", "security_action", "--json").stdout)
    [lock] = listed["deployments"]

    def failed_push() -> bool:
        return bool(json.loads(mdmq("status", lock["id"], "--json").stdout)["pushAttempts"])

    wait_until(failed_push, 120, "the lock's push refused with the revoked certificate")
    shown = mdmq("status", lock["id"]).stdout
    assert "failed pushes" in shown, shown
    assert "BadCertificate" in shown, shown
    detail = json.loads(mdmq("status", lock["id"], "--json").stdout)
    assert detail["status"] == "Queued", detail
    assert detail["held"], detail
    assert rollout["total"] == 1
