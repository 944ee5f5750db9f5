"""`mdmq rollouts` through the real entry point against PostgreSQL: the list with its real total, one rollout,
cancel and retry of a whole rollout, and `show --watch`, which ends by itself once the rollout is done; and
`mdmq deployments`' real total."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import pytest
from sqlalchemy.engine import Engine

from api.rollouts import RolloutOut
from models.ids import new_id
from models.statuses import Kind, Status
from tests.conftest import MakeDeployments, MakeRollout
from tests.helpers import force_status, run_mdmq, status_of

WATCH_TIMEOUT_S = 60  # a bound on a hung watch, not a figure: it ends as soon as the rollout is done


@pytest.fixture
def mdmq(postgres_url: str) -> Any:
    def run(*args: str, answer: str | None = None) -> tuple[int, Any, str]:
        result = run_mdmq(*args, env={"MDMQ_DATABASE_URL": postgres_url}, timeout_s=120, answer=answer)
        out = json.loads(result.stdout) if "--json" in args and result.stdout else result.stdout
        return result.returncode, out, result.stderr

    return run


def test_rollouts_lists_newest_first_with_the_real_total(
    pg: Engine, make_rollout: MakeRollout, mdmq: Any
) -> None:
    assert mdmq("rollouts", "--json")[0] == 1, "none yet: exit 1"
    first, _ = make_rollout(pg, Kind.profile, count=3)
    theirs, _ = make_rollout(pg, Kind.app, organization_id="other-org")
    newest, _ = make_rollout(pg, Kind.message, count=2)

    code, out, _ = mdmq("rollouts", "--json")
    assert code == 0
    assert ([r["id"] for r in out["rollouts"]], out["total"]) == ([newest, theirs, first], 3)
    assert set(out["rollouts"][0]) == set(RolloutOut.model_fields), "the API's names"

    code, out, _ = mdmq("rollouts", "--org", "acme", "--limit", "1", "--json")
    assert ([r["id"] for r in out["rollouts"]], out["total"]) == ([newest], 2), "the total is not the page"

    code, text, _ = mdmq("rollouts", "--org", "acme", "--limit", "1")
    assert code == 0
    assert "1 of 2 rollout(s)" in text
    assert newest in text


def test_show_one_rollout_and_the_exit_codes_of_a_missing_or_malformed_one(
    pg: Engine, make_rollout: MakeRollout, mdmq: Any
) -> None:
    rollout_id, ids = make_rollout(pg, Kind.profile, count=2)
    force_status(pg, ids[0], Status.completed)

    code, out, _ = mdmq("rollouts", "show", rollout_id, "--json")
    assert code == 0
    assert (out["id"], out["total"], out["finished"], out["counts"]) == (
        rollout_id,
        2,
        1,
        {"Queued": 1, "Completed": 1},
    )
    code, text, _ = mdmq("rollouts", "show", rollout_id)
    assert code == 0
    assert "50% done" in text
    assert "2 never pushed" in text, "the Completed one too: no push woke its device"
    assert mdmq("rollouts", "show", new_id())[0] == 1
    code, _, err = mdmq("rollouts", "show", "not-an-id")
    assert (code, "not a rollout id" in err) == (64, True)


def test_cancel_and_retry_a_whole_rollout(pg: Engine, make_rollout: MakeRollout, mdmq: Any) -> None:
    rollout_id, (queued, failed, started) = make_rollout(pg, Kind.app, count=3)
    force_status(pg, failed, Status.failed)
    force_status(pg, started, Status.in_progress)

    assert mdmq("rollouts", "cancel", rollout_id, answer="n\n")[0] == 65, "declined: nothing done"
    assert status_of(pg, queued) is Status.queued

    code, out, _ = mdmq("rollouts", "retry", rollout_id, "--yes", "--json")
    assert (code, out) == (0, {"applied": [failed], "refused": []})
    code, out, _ = mdmq("rollouts", "cancel", rollout_id, "--json", answer="y\n")
    assert (code, sorted(out["applied"])) == (0, sorted([queued, failed]))
    assert [status_of(pg, i) for i in (queued, failed, started)] == [
        Status.cancelled,
        Status.cancelled,
        Status.in_progress,
    ]
    assert mdmq("rollouts", "retry", rollout_id, "--yes")[0] == 1, "nothing to retry: exit 1"


def test_deployments_prints_the_real_total_not_the_page(
    pg: Engine, make_deployments: MakeDeployments, mdmq: Any
) -> None:
    make_deployments(pg, Kind.profile, count=5)

    code, out, _ = mdmq("deployments", "--limit", "2", "--json")
    assert (code, len(out["deployments"]), out["total"]) == (0, 2, 5)
    code, text, _ = mdmq("deployments", "--limit", "2", "--org", "acme")
    assert "2 of 5 deployment(s)" in text


def test_watch_with_json_prints_a_count_per_refresh_and_ends_when_the_rollout_is_done(
    pg: Engine, postgres_url: str, make_rollout: MakeRollout
) -> None:
    rollout_id, ids = make_rollout(pg, Kind.profile, count=3)
    force_status(pg, ids[0], Status.completed)

    with _mdmq_watching(postgres_url, rollout_id, "--json") as watch:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        assert (first["done"], first["finished"]) == (False, 1)
        force_status(pg, ids[1], Status.failed)
        force_status(pg, ids[2], Status.cancelled)
        code = watch.wait(timeout=WATCH_TIMEOUT_S)
        last = [json.loads(line) for line in watch.stdout.read().splitlines()][-1]

    assert code == 0
    assert (last["done"], last["finished"], last["etaSeconds"]) == (True, 3, 0)


def test_ctrl_c_stops_watching_with_130(pg: Engine, postgres_url: str, make_rollout: MakeRollout) -> None:
    rollout_id, _ = make_rollout(pg, Kind.profile)

    with _mdmq_watching(postgres_url, rollout_id, "--json") as watch:
        assert watch.stdout is not None
        assert json.loads(watch.stdout.readline())["done"] is False
        watch.send_signal(signal.SIGINT)
        # Read what it writes meanwhile, so that no full pipe holds it; should it not stop, say where it was.
        try:
            watch.communicate(timeout=WATCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            watch.send_signal(signal.SIGABRT)  # its threads' stacks on stderr (PYTHONFAULTHANDLER)
            _, errors = watch.communicate()
            pytest.fail(f"still watching {WATCH_TIMEOUT_S} s after Ctrl-C; its stderr ends: {errors[-2000:]}")

    assert watch.returncode == 130


def test_watch_is_a_live_view_in_a_terminal_that_ends_when_the_rollout_is_done(
    pg: Engine, postgres_url: str, make_rollout: MakeRollout
) -> None:
    rollout_id, ids = make_rollout(pg, Kind.security_action, count=4)
    force_status(pg, ids[0], Status.ready)
    terminal, its_end = pty.openpty()

    with _mdmq_watching(postgres_url, rollout_id, stdout=its_end) as watch:
        os.close(its_end)
        shown = _read_until(terminal, b"1/4")  # the bar: one of four finished
        for deployment_id in ids[1:]:
            force_status(pg, deployment_id, Status.ready)
        code = watch.wait(timeout=WATCH_TIMEOUT_S)
        shown += _read_until(terminal, None)
    os.close(terminal)

    assert code == 0
    screen = shown.decode(errors="replace")
    assert "4/4" in screen
    assert "100%" in screen
    assert "\x1b[" in screen, "drawn in place, as a terminal shows it"


@contextmanager
def _mdmq_watching(
    postgres_url: str, rollout_id: str, *args: str, stdout: int | IO[Any] = subprocess.PIPE
) -> Iterator[subprocess.Popen[str]]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MDMQ_")}
    environment |= {"MDMQ_DATABASE_URL": postgres_url, "TERM": "xterm", "COLUMNS": "120"}
    environment |= {"PYTHONFAULTHANDLER": "1"}
    # Ctrl-C as a terminal gives it, whatever the suite's own: a process started in the background by a
    # non-interactive shell (a CI runner's) ignores SIGINT, and its children inherit that.
    program = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    program += "from cli.main import main; main()"
    command = [sys.executable, "-c", program, "rollouts", "show", rollout_id]
    command += ["--watch", "--interval", "0.1", *args]
    with subprocess.Popen(
        command, env=environment, stdout=stdout, stderr=subprocess.PIPE, text=True
    ) as watch:
        try:
            yield watch
        finally:
            if watch.poll() is None:
                watch.kill()


def _read_until(terminal: int, needle: bytes | None) -> bytes:
    """What the terminal shows until `needle` appears, or (None) until the program's end closes it."""
    seen = b""
    deadline = time.monotonic() + WATCH_TIMEOUT_S
    while needle is None or needle not in seen:
        ready, _, _ = select.select([terminal], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the terminal showed no {needle!r}: {seen[-400:]!r}"
        try:
            chunk = os.read(terminal, 65_536)
        except OSError:  # EIO: every end of the terminal's other side is closed
            break
        if not chunk:
            break
        seen += chunk
    return seen
