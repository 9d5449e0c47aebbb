"""What the tests of deploy/ share: the rules, the dashboard, the PromQL metric names they use,
and Debian's promtool and prometheus (./run.sh test installs them when it can)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.serving.live import running_in_ci

RULES = REPO_ROOT / "deploy" / "prometheus" / "imgpipe-rules.yml"
RULES_TEST = REPO_ROOT / "deploy" / "prometheus" / "imgpipe-rules.test.yml"
EXAMPLE_CONFIG = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "imgpipe-dashboard.json"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not running_in_ci(),
    reason="needs Debian's prometheus package (./run.sh test installs it when it can)",
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None and not running_in_ci(),
    reason="needs Debian's prometheus package (./run.sh test installs it when it can)",
)

# A metric name in PromQL: recording rules have colons; label names and functions are filtered
# out by asking for the imgpipe prefix, label values by dropping quoted strings first.
METRIC_NAME = re.compile(r"\bimgpipe[a-zA-Z0-9_:]*")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def rules() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in rules() if "alert" in rule}


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def dashboard_expressions() -> list[str]:
    """Every target's PromQL and every template variable's query."""
    panels = dashboard()["panels"]
    expressions = [t["expr"] for panel in panels for t in panel.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            expressions.append(query["query"] if isinstance(query, dict) else query)
    return expressions


def metric_names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC_NAME.findall(QUOTED.sub("", expr))}


def rule_expressions() -> list[str]:
    return [rule["expr"] for rule in rules()]


def promtool_path() -> Path:
    assert PROMTOOL, "CI must have promtool (Debian's prometheus package)"
    return Path(PROMTOOL)
