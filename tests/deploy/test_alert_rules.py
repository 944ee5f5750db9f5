"""The Prometheus alert rules: promtool checks them and runs their unit tests, every alert is tested both
firing and not firing, and every alert says how bad it is and links to its section of the runbook."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.services import CI

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = sorted(PROMETHEUS.glob("*.test.yml"))
RUNBOOK = ROOT / "deploy" / "runbook.md"
# A path in the repository, which each site prefixes with where it keeps its copy: no made-up host.
RUNBOOK_URL = "deploy/runbook.md#"
LOCAL_PROMTOOL = ROOT / ".tools" / "bin" / "promtool"  # where `./dev test` puts it
SEVERITIES = {"warning", "critical"}

_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LOCAL_LINK = re.compile(r"\]\(#([^)\s]+)\)")


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load(RULES)["groups"] for rule in group["rules"]]


ALERTS: dict[str, dict[str, Any]] = {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _rule_test_cases() -> Iterator[dict[str, Any]]:
    for path in RULE_TESTS:
        for test in _load(path)["tests"]:
            yield from test.get("alert_rule_test") or []


def _headings(markdown: str) -> Iterator[str]:
    """The headings of a Markdown text, those inside fenced code blocks (shell comments) left out."""
    fenced = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := _HEADING.match(line)):
            yield match.group(1)


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


RUNBOOK_ANCHORS = {github_anchor(heading) for heading in _headings(RUNBOOK.read_text(encoding="utf-8"))}


@pytest.fixture(scope="module")
def promtool() -> str:
    """The project's own promtool (fetched by `./dev test`), else one on PATH; in CI, none is a failure."""
    if LOCAL_PROMTOOL.is_file() and os.access(LOCAL_PROMTOOL, os.X_OK):
        return str(LOCAL_PROMTOOL)
    found = shutil.which("promtool")
    if found is None:
        message = (
            f"promtool is neither at {LOCAL_PROMTOOL.relative_to(ROOT)} nor on PATH (`./dev test` fetches it)"
        )
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_are_valid_and_lint_clean(promtool: str) -> None:
    result = _promtool(promtool, "check", "rules", "--lint=all", "--lint-fatal", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    assert RULE_TESTS, f"no *.test.yml beside {RULES.name}"
    result = _promtool(promtool, "test", "rules", *(path.name for path in RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_example_scrape_config_is_valid(promtool: str) -> None:
    result = _promtool(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert RULES.name in _load(PROMETHEUS / "prometheus.yml")["rule_files"]


def test_rule_tests_load_the_alert_rules() -> None:
    for path in RULE_TESTS:
        assert RULES.name in _load(path)["rule_files"], path.name


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_alert_is_tested_firing_and_not_firing(alert: str) -> None:
    cases = [case for case in _rule_test_cases() if case["alertname"] == alert]
    firing = [case for case in cases if case.get("exp_alerts")]
    quiet = [case for case in cases if not case.get("exp_alerts")]
    assert firing, f"no test expects {alert} to fire"
    assert quiet, f"no test expects {alert} not to fire (exp_alerts: [])"
    severity = ALERTS[alert]["labels"]["severity"]
    for case in firing:
        for expected in case["exp_alerts"]:
            assert expected.get("exp_labels", {}).get("severity") == severity, case
            assert set(expected.get("exp_annotations", {})) == set(ALERTS[alert]["annotations"]), case


def test_every_tested_alert_exists() -> None:
    tested = {case["alertname"] for case in _rule_test_cases()}
    assert tested <= set(ALERTS), tested - set(ALERTS)


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_alert_has_severity_annotations_and_runbook_section(alert: str) -> None:
    rule = ALERTS[alert]
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    assert rule.get("for"), "an alert without `for:` flaps"
    annotations = rule.get("annotations", {})
    assert annotations.get("summary")
    assert re.search(r"\{\{.*(\$labels|\$value|query ).*\}\}", annotations.get("description", "")), (
        "the description says which one and how much, from the alert's labels or value or a query"
    )
    url = annotations.get("runbook_url", "")
    assert url.startswith(RUNBOOK_URL), url
    assert (ROOT / url.partition("#")[0]) == RUNBOOK
    anchor = url.removeprefix(RUNBOOK_URL)
    assert anchor == github_anchor(alert), "the runbook's section for an alert is headed by its name"
    assert anchor in RUNBOOK_ANCHORS, f"{RUNBOOK.name} has no heading for #{anchor}"


def test_runbook_links_within_itself_resolve() -> None:
    links = set(_LOCAL_LINK.findall(RUNBOOK.read_text(encoding="utf-8")))
    assert links, "the runbook links its sections to each other"
    assert links <= RUNBOOK_ANCHORS, links - RUNBOOK_ANCHORS


def test_github_anchor() -> None:
    assert github_anchor("MdmqDeploymentsHeld") == "mdmqdeploymentsheld"
    assert github_anchor("Busy or locked device") == "busy-or-locked-device"
    assert (
        github_anchor("Why deployments stay Pending, or end Failed?")
        == "why-deployments-stay-pending-or-end-failed"
    )


# A threshold an alert's name states, and how its expression writes it (FIGURE: the name's number).
_NAMED_THRESHOLDS = (
    (re.compile(r"Above(\d+)Percent"), r"> 0?\.FIGURE\b"),
    (re.compile(r"Above(\d+)MiB"), r"> FIGURE \* 1024 \* 1024\b"),
    (re.compile(r"In(\d+)Days"), r"< FIGURE \* 86400\b"),
)


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_a_threshold_in_an_alerts_name_is_the_one_its_expression_uses(alert: str) -> None:
    for name_pattern, expression_pattern in _NAMED_THRESHOLDS:
        for figure in name_pattern.findall(alert):
            written = f"{int(figure):02d}" if "Percent" in name_pattern.pattern else figure
            assert re.search(expression_pattern.replace("FIGURE", written), ALERTS[alert]["expr"]), alert


def test_alerts_name_their_thresholds() -> None:
    named = [a for a in ALERTS if any(pattern.search(a) for pattern, _ in _NAMED_THRESHOLDS)]
    assert {"MdmqApi5xxRatioAbove5Percent", "MdmqWorkerMemoryAbove768MiB"} <= set(named)
