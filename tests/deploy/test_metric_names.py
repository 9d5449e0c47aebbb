"""Every series the rules and the dashboard read exists: the service's in a live scrape, the
recorded ones in the rules, the drift job's in what ``imgpipe drift`` exports."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from imgpipe.data.splits import SplitArrays
from imgpipe.monitoring.drift_metrics import drift_registry
from imgpipe.serving.app import create_app
from imgpipe.serving.settings import ServeConfig
from tests.deploy.prometheus import (
    dashboard,
    dashboard_expressions,
    metric_names,
    recorded_names,
    rule_expressions,
)
from tests.monitoring.exporters import SUMMARY
from tests.serving.live import uploads

BASELINE = {
    "mean_confidence": 0.9,
    "confidence_quantiles": {"0.05": 0.6, "0.1": 0.7, "0.25": 0.8, "0.5": 0.95},
    "predicted_share": {"left": 0.5, "right": 0.5},
}


def sample_names(exposition: str) -> set[str]:
    return {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def service_scrape(onnx_model: Path, tmp_path: Path, test_split: SplitArrays) -> set[str]:
    """The names a live service exports once it has classified something and refused
    something (a counter with labels shows up at its first increment)."""
    baseline = tmp_path / "drift_baseline.json"
    baseline.write_text(json.dumps(BASELINE))
    config = ServeConfig(model=onnx_model, baseline=baseline, feature_log=None)
    with TestClient(create_app(config)) as client:
        assert client.post("/predict", files=uploads(test_split.images[:2])).status_code == 200
        not_an_image = [("files", ("notes.txt", b"hello", "text/plain"))]
        assert client.post("/predict", files=not_an_image).status_code == 415
        return sample_names(client.get("/metrics").text)


def drift_names() -> set[str]:
    return sample_names(generate_latest(drift_registry(SUMMARY)).decode())


def test_rules_and_dashboard_read_only_series_that_exist(
    onnx_model: Path, tmp_path: Path, test_split: SplitArrays
) -> None:
    used = metric_names(rule_expressions()) | metric_names(dashboard_expressions())
    recorded = {name for name in used if ":" in name}
    drift = {name for name in used if name.startswith("imgpipe_drift_")}
    served = used - recorded - drift
    assert sorted(recorded - recorded_names()) == [], "recording rules that do not exist"
    assert sorted(drift - drift_names()) == [], "not exported by imgpipe drift"
    assert sorted(served - service_scrape(onnx_model, tmp_path, test_split)) == [], (
        "not in a live /metrics scrape"
    )
    # The groups above are not empty by accident of a regex: each side is really used.
    assert {"imgpipe_model_info", "imgpipe_baseline_predicted_share"} <= served
    assert "imgpipe_drift_last_run_timestamp_seconds" in drift


def test_dashboard_asks_for_its_datasource() -> None:
    """Importable anywhere: every panel and query reads the ${datasource} variable."""
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
