"""The Grafana dashboard and its provisioning: loadable from files, on any Prometheus datasource, with
queries that are well-formed PromQL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.names import (
    dashboard_metric_names,
    expressions,
    load,
    metric_names,
    panels,
    strip_strings,
    variable_queries,
)

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD_PATH = GRAFANA / "mdmq.json"
RULES_PATH = GRAFANA.parent / "prometheus" / "alerts.yml"
PROVIDER_PATH = GRAFANA / "provisioning" / "dashboards" / "mdmq.yaml"
DATASOURCE_PATH = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
README_PATH = GRAFANA / "README.md"

DASHBOARD = load(DASHBOARD_PATH)
QUERY_PANELS = [p for p in panels(DASHBOARD) if p["type"] not in ("row", "text")]
TARGETS = [(p, t) for p in QUERY_PANELS for t in p.get("targets", [])]
EXPRESSIONS = expressions(DASHBOARD)
DATASOURCE_UIDS = ("${datasource}", "$datasource")

_MATCHER = re.compile(r'^\s*[A-Za-z_]\w*\s*(=~|!~|!=|=)\s*""\s*$')
_DURATION = re.compile(
    r"^\s*(\$__rate_interval|\$__interval|(\d+(ms|s|m|h|d|w|y))+)\s*(:\s*((\d+(ms|s|m|h|d|w|y))+)?)?$"
)
_PAIRS = {")": "(", "]": "[", "}": "{"}


def promql_problems(expr: str) -> list[str]:
    """What makes `expr` implausible PromQL: unbalanced brackets or quotes, empty or malformed selectors,
    ranges that are not durations, no series at all. Empty when it looks well-formed."""
    problems: list[str] = []
    text = strip_strings(expr)
    if any(quote in text.replace('""', "") for quote in "\"'`"):
        problems.append("unterminated string")
    stack: list[str] = []
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in _PAIRS and (not stack or stack.pop() != _PAIRS[char]):
            problems.append(f"unbalanced {char!r}")
            break
    if stack:
        problems.append(f"unclosed {''.join(stack)!r}")
    for matchers in re.findall(r"\{([^{}]*)\}", text):
        parts = matchers.split(",")
        if parts and not parts[-1].strip():
            parts = parts[:-1]  # PromQL allows a trailing comma
        if not parts:
            problems.append("empty selector {}")
        problems += [f"malformed matcher {part.strip()!r}" for part in parts if not _MATCHER.match(part)]
    text_without_variables = re.sub(r"\$\{\w+\}", "", text)
    for duration in re.findall(r"\[([^\[\]]*)\]", text_without_variables):
        if not _DURATION.match(duration):
            problems.append(f"not a duration: [{duration}]")
    if not metric_names(expr):
        problems.append("selects no series")
    return problems


def enclosing_calls(expr: str, name: str) -> list[set[str]]:
    """For each place `expr` selects the series `name`: the functions and aggregations around it."""
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^()]*\)", " ", strip_strings(expr))
    token = re.compile(
        r"(?<![\w$:])(?P<call>[A-Za-z_:][\w:]*)\s*\(|(?P<open>\()|(?P<close>\))|(?<![\w$:])(?P<ident>[A-Za-z_:][\w:]*)"
    )
    stack: list[str] = []
    found: list[set[str]] = []
    for match in token.finditer(text):
        if match["call"] is not None:
            stack.append(match["call"])
        elif match["open"] is not None:
            stack.append("")
        elif match["close"] is not None and stack:
            stack.pop()
        elif match["ident"] == name:
            found.append(set(stack))
    return found


def is_scheduler_gauge(name: str) -> bool:
    # Every mdmq gauge comes from the scheduler, set by the leader alone: counters end in _total and
    # histograms are read through _bucket, _sum and _count.
    return name.startswith("mdmq_") and not name.endswith(("_total", "_bucket", "_sum", "_count"))


def target_id(item: tuple[dict[str, Any], dict[str, Any]]) -> str:
    panel, target = item
    return f"{panel['title']}/{target.get('refId', '?')}"


def all_datasource_references(node: Any, path: str = "") -> list[tuple[str, Any]]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                found.append((f"{path}.{key}", value))
            found += all_datasource_references(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += all_datasource_references(value, f"{path}[{i}]")
    return found


# --- the file -----------------------------------------------------------------------------------------------


def test_dashboard_is_provisionable_from_a_file() -> None:
    raw = DASHBOARD_PATH.read_text(encoding="utf-8")
    assert "__inputs" not in DASHBOARD
    assert "__requires" not in DASHBOARD
    assert "${DS_" not in raw, "an exported datasource input is left in the file"
    assert DASHBOARD["uid"] == "mdmq-overview"
    assert DASHBOARD["title"]
    assert DASHBOARD["tags"]
    assert DASHBOARD["schemaVersion"] >= 38
    assert DASHBOARD["refresh"] == "30s"
    assert DASHBOARD["time"] == {"from": "now-6h", "to": "now"}
    assert DASHBOARD.get("id") is None, "a provisioned dashboard gets its id from Grafana"


def test_datasource_is_a_template_variable() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"


def test_every_datasource_reference_is_the_variable() -> None:
    references = [
        (path, value)
        for path, value in all_datasource_references(DASHBOARD)
        if not path.startswith(".annotations")  # Grafana's built-in annotations query itself
    ]
    assert len(references) >= len(QUERY_PANELS) + len(TARGETS)
    wrong = [
        path
        for path, value in references
        if not (
            isinstance(value, dict)
            and value.get("type") == "prometheus"
            and value.get("uid") in DATASOURCE_UIDS
        )
    ]
    assert not wrong


@pytest.mark.parametrize("panel", list(panels(DASHBOARD)), ids=lambda p: str(p.get("title")))
def test_panel_and_its_targets_use_the_datasource_variable(panel: dict[str, Any]) -> None:
    assert panel["datasource"]["uid"] in DATASOURCE_UIDS
    for target in panel.get("targets", []):
        assert target["datasource"] == {"type": "prometheus", "uid": panel["datasource"]["uid"]}


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in panels(DASHBOARD)]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) for i in ids)


def test_panels_fit_the_grid_without_overlapping() -> None:
    # A collapsed row keeps its panels' positions for when it opens: each row's panels are laid out apart.
    layouts = [DASHBOARD["panels"]] + [p["panels"] for p in panels(DASHBOARD) if p.get("panels")]
    for layout in layouts:
        occupied: dict[tuple[int, int], str] = {}
        for panel in layout:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[(x, y)]}"
                    occupied[(x, y)] = panel["title"]


@pytest.mark.parametrize("panel", QUERY_PANELS, ids=lambda p: str(p["title"]))
def test_query_panel_has_an_expression_a_unit_and_a_description(panel: dict[str, Any]) -> None:
    assert any(target.get("expr", "").strip() for target in panel.get("targets", []))
    assert panel["fieldConfig"]["defaults"].get("unit")
    assert panel.get("description", "").strip()


@pytest.mark.parametrize("item", [(p, t) for p, t in TARGETS if p["type"] == "timeseries"], ids=target_id)
def test_series_legends_name_labels_the_query_keeps(item: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, target = item
    legend = target.get("legendFormat", "")
    assert legend
    assert legend != "__auto"
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        assert re.search(rf"\b{label}\b", target["expr"]), f"{{{{{label}}}}} is not in the query"


def test_first_rows_are_the_at_a_glance_stats() -> None:
    top_level = DASHBOARD["panels"]
    rows = [i for i, panel in enumerate(top_level) if panel["type"] == "row"]
    assert rows[0] == 0
    glance = top_level[1 : rows[1]]
    assert glance
    assert {panel["type"] for panel in glance} == {"stat"}
    used = set().union(*(metric_names(t["expr"]) for panel in glance for t in panel["targets"]))
    for name in (
        "mdmq_deployments",
        "mdmq_deployments_held",
        "mdmq_deployments_stuck",
        "mdmq_certificate_expiry_timestamp_seconds",
        "mdmq_scheduler_leader",
        "up",
    ):
        assert name in used


def test_soonest_certificate_expiry_is_in_days_with_thresholds() -> None:
    (panel,) = [
        p
        for p in QUERY_PANELS
        if p["type"] == "stat" and "mdmq_certificate_expiry_timestamp_seconds" in p["targets"][0]["expr"]
    ]
    expr = re.sub(r"\s+", "", panel["targets"][0]["expr"])
    assert expr == "(min(mdmq_certificate_expiry_timestamp_seconds)-time())/86400"
    steps = [step["value"] for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 0, 7, 30]


def test_queue_wait_shows_each_named_organizations_p95_beside_the_alerts_line_and_its_exclusions() -> None:
    (wait,) = [p for p in QUERY_PANELS if p["title"] == "Queue wait p95 by organization"]
    (target,) = wait["targets"]
    expr = re.sub(r"\s+", " ", target["expr"])
    assert expr.startswith("histogram_quantile(0.95, sum by (organization, le) (")
    assert metric_names(expr) == {"mdmq_queue_wait_seconds_bucket"}
    assert target["legendFormat"] == "{{organization}}"
    defaults = wait["fieldConfig"]["defaults"]
    assert defaults["unit"] == "s"
    alert = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    (rule,) = [r for g in alert["groups"] for r in g["rules"] if r.get("alert") == "MdmqQueueWaitHigh"]
    above = re.search(r"\)\s*>\s*(\d+)", rule["expr"])
    assert above is not None, rule["expr"]
    threshold = float(above.group(1))
    assert [step["value"] for step in defaults["thresholds"]["steps"]] == [None, threshold]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "dashed"
    (limits,) = [p for p in QUERY_PANELS if p["title"] == "Organizations held or paced"]
    read = set().union(*(metric_names(t["expr"]) for t in limits["targets"]))
    assert read == {"mdmq_organization_held", "mdmq_organization_paced"}
    assert limits["gridPos"]["y"] == wait["gridPos"]["y"], "side by side"


# --- the queries --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("item", TARGETS, ids=target_id)
def test_expression_is_plausible_promql(item: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, target = item
    assert promql_problems(target["expr"]) == []


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(mdmq_holds_total[5m])",
        "sum(rate(mdmq_holds_total[5m])))",
        "mdmq_holds_total{}",
        'mdmq_holds_total{provider="apns"',
        "mdmq_holds_total{provider=}",
        'mdmq_holds_total{provider="apns}',
        "rate(mdmq_holds_total[$__rate_interval)",
        "rate(mdmq_holds_total[five minutes])",
        "sum by (provider) (vector(1))",
    ],
)
def test_implausible_promql_is_caught(expr: str) -> None:
    assert promql_problems(expr)


def test_rates_use_the_rate_interval() -> None:
    ranges = [r for expr in EXPRESSIONS for r in re.findall(r"\[([^\[\]]*)\]", strip_strings(expr))]
    assert ranges
    assert set(ranges) == {"$__rate_interval"}


def test_histogram_quantiles_keep_the_bucket_label() -> None:
    quantiles = [expr for expr in EXPRESSIONS if "histogram_quantile" in expr]
    assert quantiles
    for expr in quantiles:
        assert re.search(r"by\s*\([^)]*\ble\b[^)]*\)", expr), expr
        assert all(name.endswith("_bucket") for name in metric_names(expr)), expr


def test_scheduler_gauges_are_read_with_max_or_min() -> None:
    checked = 0
    for expr in EXPRESSIONS:
        for name in filter(is_scheduler_gauge, metric_names(expr)):
            for calls in enclosing_calls(expr, name):
                assert calls & {"max", "min"}, f"{name} is not under max or min in {expr}"
                checked += 1
    assert checked >= 10


def test_enclosing_calls_sees_through_grouping_and_strings() -> None:
    expr = 'sum(max by (kind) (label_replace(mdmq_deployments{kind="a(b"}, "x", "$1", "kind", "(.*)")))'
    assert enclosing_calls(expr, "mdmq_deployments") == [{"sum", "max", "label_replace"}]
    assert enclosing_calls("sum(mdmq_deployments)", "mdmq_deployments") == [{"sum"}]


@pytest.mark.parametrize("name", ["kind", "provider"])
def test_filter_variables(name: str) -> None:
    (variable,) = [v for v in DASHBOARD["templating"]["list"] if v["name"] == name]
    assert variable["type"] == "query"
    assert variable["datasource"]["uid"] in DATASOURCE_UIDS
    assert variable["multi"] is True
    assert variable["includeAll"] is True
    assert variable["query"].startswith("label_values(")
    assert any(f'"${name}"' in expr for expr in EXPRESSIONS)


# --- the metric names helper --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.95, sum by (provider, le) "
            '(rate(mdmq_push_duration_seconds_bucket{provider=~"$provider"}[$__rate_interval])))',
            {"mdmq_push_duration_seconds_bucket"},
        ),
        ('sum(up{job="mdmq-worker"})', {"up"}),
        (
            "(min(mdmq_certificate_expiry_timestamp_seconds) - time()) / 86400",
            {"mdmq_certificate_expiry_timestamp_seconds"},
        ),
        (
            "max by (scheduler_job) (label_replace(mdmq_scheduler_job_duration_seconds, "
            '"scheduler_job", "$1", "exported_job", "(.+)"))',
            {"mdmq_scheduler_job_duration_seconds"},
        ),
        (
            "sum(rate(a_total[5m] offset 1h)) / ignoring (x) group_left sum without (instance) (b) "
            "and on (kind) c or vector(1e3) unless d",
            {"a_total", "b", "c", "d"},
        ),
        ("sum BY (kind) (x) AND Y", {"x", "Y"}),
        ('{__name__="dramatiq_messages_total", queue_name="bulk"}', {"dramatiq_messages_total"}),
        ('label_join(x, "scheduler_job", ";", "scheduler_job", "job")', {"x"}),
        ("count(x == 0) or vector(0)", {"x"}),
        ("sum(rate(d_count[$__rate_interval])) > bool Inf", {"d_count"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_dashboard_metric_names_reads_collapsed_rows_and_variables(tmp_path: Path) -> None:
    dashboard = {
        "panels": [
            {"type": "stat", "id": 1, "targets": [{"expr": "sum(up)"}]},
            {
                "type": "row",
                "id": 2,
                "collapsed": True,
                "panels": [{"type": "timeseries", "id": 3, "targets": [{"expr": "rate(nested_total[1m])"}]}],
            },
        ],
        "templating": {
            "list": [
                {"type": "datasource", "name": "datasource", "query": "prometheus"},
                {"type": "query", "name": "kind", "query": "label_values(from_variable, kind)"},
                {"type": "query", "name": "org", "query": {"query": 'label_values(also{a="b"}, org)'}},
            ]
        },
    }
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(dashboard), encoding="utf-8")
    assert dashboard_metric_names(path) == {"up", "nested_total", "from_variable", "also"}


def test_dashboard_metric_names_of_the_dashboard() -> None:
    names = dashboard_metric_names(DASHBOARD_PATH)
    assert {"up", "mdmq_push_duration_seconds_bucket", "mdmq_deployments"} <= names
    assert all(re.fullmatch(r"[a-z_:][a-z0-9_:]*", name) for name in names), names
    grouped = {
        label
        for expr in EXPRESSIONS
        for clause in re.findall(r"by\s*\(([^)]*)\)", expr)
        for label in re.split(r"\s*,\s*", clause.strip())
    }
    not_series = {"rate", "sum", "max", "min", "histogram_quantile", "label_replace", "time", "vector"}
    assert not names & (grouped | not_series)
    assert set(variable_queries(DASHBOARD)) == {"mdmq_deployments", "mdmq_push_requests_total"}


# --- provisioning -------------------------------------------------------------------------------------------


def test_dashboard_provider_points_where_the_readme_mounts_the_file() -> None:
    config = yaml.safe_load(PROVIDER_PATH.read_text(encoding="utf-8"))
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["allowUiUpdates"] is False
    assert provider["folder"] == "mdmq"
    path = provider["options"]["path"]
    assert path.startswith("/")
    readme = README_PATH.read_text(encoding="utf-8")
    assert f"{path.rstrip('/')}/{DASHBOARD_PATH.name}" in readme
    assert "provisioning/dashboards/mdmq.yaml" in readme


def test_datasource_example_is_the_type_the_dashboard_asks_for() -> None:
    config = yaml.safe_load(DATASOURCE_PATH.read_text(encoding="utf-8"))
    assert config["apiVersion"] == 1
    (datasource,) = config["datasources"]
    (variable,) = [v for v in DASHBOARD["templating"]["list"] if v["type"] == "datasource"]
    assert datasource["type"] == variable["query"]
    assert datasource["url"] == "http://prometheus:9090"
    assert re.fullmatch(r"\d+s", datasource["jsonData"]["timeInterval"])
