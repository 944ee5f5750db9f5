"""The operator's page in a real browser (Debian's chromium, driven by Playwright) during a running rollout:
PostgreSQL, a Redis of the test's own or a RabbitMQ virtual host of its own, a real `dramatiq` worker
process, the emulators and `mdmq api` in a process of its own. The organization's AOSP key is revoked at
the push service, so its AOSP deployments are held and the rollout stays in progress. An operator signs in
with an operator's token (an organization's token and a wrong one are refused), sees the queues, the live
worker, the rollout's progress bar, the held organization with its reason and the credentials, watches the
page refresh itself, signs out; a revoked token sends the open page back to the sign-in.

`MDMQ_OPS_SCREENSHOT=docs/img/ops.png` keeps the page's screenshot on Redis there (the README's picture)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from config.settings import Settings
from models.enums import Provider
from models.types import utcnow
from sandbox.rollout import Rollout
from tests.helpers import answers, free_ports, run_mdmq, wait_until
from tests.services import CI, RABBITMQ_URL, OwnRedis, require
from workers.overview import Overview, gather_overview

pytestmark = pytest.mark.timeout(600)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # the suite runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # No calls home: the machine's network is closed, and they would only slow the start.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if CI:
            raise RuntimeError("chromium is not installed: `./dev test` installs it")
        pytest.skip("chromium is not installed (`./dev test` installs it)")
    return path


@contextmanager
def own_redis() -> Iterator[str]:
    """A Redis server of the test's own on a free port: the machine's is shared, and the page counts every
    heartbeat and message on it."""
    with OwnRedis(free_ports(1)[0]) as server:
        yield server.url


@contextmanager
def own_vhost() -> Iterator[str]:
    """A virtual host of the test's own on the machine's RabbitMQ: no other test's worker takes its
    messages, and its queues' consumers are this test's worker alone."""
    require(RABBITMQ_URL, "RabbitMQ")
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        if CI:
            raise RuntimeError("rabbitmqctl is not installed beside RabbitMQ")
        pytest.skip("rabbitmqctl is not installed")
    vhost = f"mdmq-ops-{uuid.uuid4().hex[:8]}"
    subprocess.run([ctl, "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    try:
        permissions = [ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]
        subprocess.run(permissions, check=True, capture_output=True, timeout=60)
        yield f"{RABBITMQ_URL.rstrip('/')}/{vhost}"
    finally:
        subprocess.run([ctl, "delete_vhost", vhost], check=False, capture_output=True, timeout=60)


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_an_operator_follows_a_running_rollout_on_the_page(
    broker: str, postgres_url: str, tmp_path: Path
) -> None:
    browser_path = chromium()
    api_port, api_metrics, worker_metrics, scheduler_metrics = free_ports(4)
    with own_redis() if broker == "redis" else own_vhost() as broker_url:
        settings = Settings(
            database_url=postgres_url,
            broker_url=broker_url,
            metrics_host="127.0.0.1",
            api_metrics_port=api_metrics,
            worker_metrics_port=worker_metrics,
            scheduler_metrics_port=scheduler_metrics,
            metrics_dir=str(tmp_path / "worker-metrics"),
        )
        with Rollout(
            settings, devices=40, seed=43, worker_processes=1, worker_log=tmp_path / "workers.log"
        ) as r:
            r.registry.revoke_aosp_api_key(r.keys[Provider.aosp].secret)
            database = {"MDMQ_DATABASE_URL": postgres_url}
            created = run_mdmq(
                "token", "create", "--org", "operators", "--create-org", "--permission", "mdm.ops.view",
                "--json", env=database, timeout_s=60,
            )  # fmt: skip
            assert created.returncode == 0, created.stderr
            operator = json.loads(created.stdout)
            organization_token = run_mdmq(
                "token", "create", "--org", r.organization_id, "--create-org",
                "--permission", "mdm.deployment.get", env=database, timeout_s=60,
            ).stdout.strip()  # fmt: skip
            environment = r.environment() | {"MDMQ_OPS_REFRESH_S": "1"}
            log = (tmp_path / "api.log").open("wb")
            api = subprocess.Popen(
                [str(Path(sys.executable).parent / "mdmq"), "api", "--port", str(api_port)],
                env=environment,
                stderr=log,
            )
            try:
                r.start()
                held = _wait_for_hold(r)
                base = f"http://127.0.0.1:{api_port}"
                wait_until(lambda: answers(base + "/healthz"), 60, "the API")
                _browse(browser_path, base, r, held, operator, organization_token, tmp_path)
            finally:
                api.send_signal(signal.SIGTERM)
                api.wait(timeout=60)
                log.close()


def _wait_for_hold(r: Rollout) -> Overview:
    """The overview once the AOSP deployments are held and the rollout shows them."""

    def overview() -> Overview:
        with r.app.session() as s:
            return gather_overview(s, r.app.broker, now=utcnow())

    def held() -> bool:
        o = overview()
        return any(h.organization_id == r.organization_id for h in o.holds) and any(
            x.organization_id == r.organization_id and x.held and x.finished for x in o.rollouts
        )

    wait_until(held, 120, "the organization's AOSP pushes held, and some other deployments finished")
    return overview()


def _browse(
    browser_path: str,
    base: str,
    r: Rollout,
    held: Overview,
    operator: dict[str, str],
    organization_token: str,
    tmp_path: Path,
) -> None:
    [rollout] = [x for x in held.rollouts if x.organization_id == r.organization_id]
    [hold] = [h for h in held.holds if h.organization_id == r.organization_id]
    expect.set_options(timeout=20_000)  # two cores shared with the rest of the suite
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base + "/ops")
            expect(page).to_have_url(base + "/ops/sign-in")

            _sign_in(page, organization_token)
            expect(page.get_by_role("alert")).to_contain_text("no mdm.ops.view permission")
            _sign_in(page, "mdmq_not-a-token")
            expect(page.get_by_role("alert")).to_have_text("Invalid token.")
            _sign_in(page, operator["token"])
            expect(page).to_have_url(base + "/ops")

            _sees_every_figure(page, r, rollout.rollout_id, rollout.total, hold.reason)
            before = page.locator("#updated").inner_text()
            expect(page.locator("#updated")).not_to_have_text(before)  # refreshed by itself, every second
            _screenshot(page, tmp_path)

            page.locator("#sign-out button").click()
            expect(page).to_have_url(base + "/ops/sign-in")
            page.goto(base + "/ops")
            expect(page).to_have_url(base + "/ops/sign-in")

            _sign_in(page, operator["token"])
            expect(page).to_have_url(base + "/ops")
            revoked = run_mdmq("token", "revoke", operator["id"], env=_database(r), timeout_s=60)
            assert revoked.returncode == 0, revoked.stderr
            expect(page).to_have_url(base + "/ops/sign-in")  # at its next refresh
        finally:
            browser.close()


def _sign_in(page: Page, token: str) -> None:
    page.locator("#token").fill(token)
    page.locator("#sign-in button").click()


def _sees_every_figure(page: Page, r: Rollout, rollout_id: str, total: int, reason: str) -> None:
    redis = r.app.settings.broker_url.startswith("redis")
    for queue in ("urgent", "paced", "bulk"):
        cells = page.locator(f"#queues tr[data-queue='{queue}'] td")
        expect(cells).to_have_count(6 if redis else 7)  # RabbitMQ: its consumers too
        if not redis:
            # RabbitMQ tells no client its unacknowledged messages, a live or a dead worker's.
            expect(cells.nth(3)).to_have_text("n/a")
            expect(cells.nth(4)).to_have_text("n/a")
    # One `dramatiq` worker process on the bulk queue and the urgent lane's; the test's own process and the
    # API's send too, and are no workers. RabbitMQ counts consumers of a queue: one on each.
    expect(page.locator("#live-workers")).to_have_text("2" if redis else "1")
    if redis:
        expect(page.locator("#workers tbody tr").first).to_contain_text("s ago")
        expect(page.locator("#workers tbody")).to_contain_text("(urgent)")
    else:
        expect(page.locator("#workers")).to_contain_text("RabbitMQ keeps no heartbeats")
    bar = page.locator(f"#rollouts tr[data-rollout='{rollout_id}'] progress")
    expect(bar).to_have_attribute("max", str(total))
    assert 0 < int(bar.get_attribute("value") or "0") < total, "in progress: some finished, the held ones not"
    holding = page.locator(f"#holds tr[data-organization='{r.organization_id}']")
    expect(holding.locator(".reason")).to_have_text(reason)
    expect(holding).to_contain_text("aosp")
    apns = page.locator(f"#credentials tr[data-credential='{r.organization_id}/apns'] td")
    expect(apns.nth(3)).to_have_text("valid")
    assert float(apns.nth(5).inner_text()) > 0, "days left"
    assert all(secret.secret not in page.content() for secret in r.keys.values()), "no secret on the page"


def _screenshot(page: Page, tmp_path: Path) -> None:
    path = tmp_path / "ops.png"
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("MDMQ_OPS_SCREENSHOT")
    if keep and "broker redis" in page.locator("#updated").inner_text():  # the README's: with heartbeats
        shutil.copyfile(path, keep)


def _database(r: Rollout) -> dict[str, str]:
    return {"MDMQ_DATABASE_URL": r.app.settings.database_url}
