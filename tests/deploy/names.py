"""The series a Grafana dashboard or a Prometheus rule file reads: its PromQL, and the metric names in it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`""")
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""")
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
# An identifier that is not part of a number, a duration or a variable; a following "(" makes it a call.
_IDENTIFIER = re.compile(r"(?<![\w$:.])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"inf", "nan"}
)
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+)\s*,\s*[A-Za-z_]\w*\s*\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\((.+)\)\s*$", re.DOTALL)


def strip_strings(expr: str) -> str:
    """The expression with every string literal replaced by an empty one (`""`)."""
    return _STRING.sub('""', expr)


def metric_names(expr: str) -> set[str]:
    """The raw series names a PromQL expression selects, e.g. `mdmq_push_duration_seconds_bucket` or `up`.

    Functions, aggregations, keywords, label names, strings, durations and Grafana variables are not names.
    """
    names = {a or b for a, b in _NAME_MATCHER.findall(expr)}
    text = strip_strings(expr)
    text = _GRAFANA_VARIABLE.sub("0", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    for name, call in _IDENTIFIER.findall(text):
        if not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of the dashboard, rows included, and the panels inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL of every panel's targets."""
    return [
        target["expr"]
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def variable_queries(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL inside the dashboard's query variables (`label_values(selector, label)` and the like)."""
    found = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = _LABEL_VALUES.match(text) or _QUERY_RESULT.match(text)
        if match:
            found.append(match.group(1))
    return found


def load(path: str | Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return dashboard


def dashboard_metric_names(path: str | Path) -> set[str]:
    """The raw series names the dashboard at `path` queries, in its panels and its variables."""
    dashboard = load(path)
    names: set[str] = set()
    for expr in expressions(dashboard) + variable_queries(dashboard):
        names |= metric_names(expr)
    return names


def rule_metric_names(path: str | Path) -> set[str]:
    """The raw series names the expressions of the Prometheus rule file at `path` select, the series its
    recording rules produce (`level:metric:operations`) included."""
    groups = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["groups"]
    return {name for group in groups for rule in group["rules"] for name in metric_names(rule["expr"])}
