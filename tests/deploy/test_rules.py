"""The alerting rules, checked and unit-tested by Prometheus's own promtool."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy.prometheus import (
    EXAMPLE_CONFIG,
    RULES,
    RULES_TEST,
    alert_names,
    needs_promtool,
    promtool_path,
    recorded_names,
    rules,
)


@needs_promtool
def test_promtool_accepts_the_rules_and_the_example_config() -> None:
    for kind, path in (("rules", RULES), ("config", EXAMPLE_CONFIG)):
        check = subprocess.run(
            [promtool_path(), "check", kind, path], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    """Synthetic series: each alert fires when it should and stays quiet when it should not."""
    run = subprocess.run(
        [promtool_path(), "test", "rules", RULES_TEST.name],
        cwd=RULES_TEST.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """promtool only runs the cases written down: hold the test file to the rules."""
    tests = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert sorted(alert_names() - firing) == [], "alerts never tested firing"
    assert sorted(alert_names() - quiet) == [], "alerts never tested quiet"
    assert (firing | quiet) <= alert_names(), "tests of alerts that do not exist"


def test_every_alert_has_severity_reason_and_runbook() -> None:
    for rule in rules():
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert "\n" not in rule["annotations"]["summary"], rule["alert"]


def test_recording_rules_are_named_level_metric_operation() -> None:
    """Prometheus's naming convention, which the metric-name test relies on (a colon means a
    recorded series, never one the service exports)."""
    for name in recorded_names():
        level, metric, operation = name.split(":")
        assert level == "imgpipe" and metric and operation, name
