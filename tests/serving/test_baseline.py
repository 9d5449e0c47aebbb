"""imgpipe serve --baseline: the drift baseline and the model's identity as Prometheus series,
for the alerts in deploy/prometheus to compare live traffic against."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from imgpipe.cli import _served_baseline, build_parser
from imgpipe.errors import ImgpipeError
from imgpipe.serving.app import create_app
from imgpipe.serving.settings import ServeConfig
from tests.monitoring.exporters import samples

SUMMARY = {
    "rows": 2000,
    "mean_confidence": 0.93,
    "confidence_quantiles": {"0.05": 0.51, "0.1": 0.62, "0.25": 0.88, "0.5": 0.99},
    "predicted_share": {"left": 0.4, "right": 0.6},
}


def scrape(onnx_model: Path, baseline: Path | None) -> dict[Any, float]:
    with TestClient(create_app(ServeConfig(model=onnx_model, baseline=baseline))) as client:
        return samples(client.get("/metrics").text)


def written(tmp_path: Path, summary: dict[str, Any]) -> Path:
    path = tmp_path / "drift_baseline.json"
    path.write_text(json.dumps(summary))
    return path


def test_baseline_and_model_identity_are_exported(onnx_model: Path, tmp_path: Path) -> None:
    exported = scrape(onnx_model, written(tmp_path, SUMMARY))
    assert exported[("imgpipe_baseline_mean_confidence", ())] == 0.93
    assert exported[("imgpipe_baseline_confidence", (("quantile", "0.1"),))] == 0.62
    assert exported[("imgpipe_baseline_predicted_share", (("predicted", "right"),))] == 0.6
    [(_, labels)] = [key for key in exported if key[0] == "imgpipe_model_info"]
    sha256 = hashlib.sha256(onnx_model.read_bytes()).hexdigest()
    assert dict(labels) == {"sha256": sha256, "architecture": "test_resnet", "commit": ""}


def test_without_a_baseline_no_baseline_series_at_all(onnx_model: Path) -> None:
    """No zeros for the alerts to compare against: ImgpipeBaselineMissing says so instead."""
    exported = scrape(onnx_model, None)
    assert [key for key in exported if key[0].startswith("imgpipe_baseline")] == []
    assert any(key[0] == "imgpipe_model_info" for key in exported)


def test_a_summary_from_before_the_quantiles_still_serves(onnx_model: Path, tmp_path: Path) -> None:
    old = {key: value for key, value in SUMMARY.items() if key != "confidence_quantiles"}
    exported = scrape(onnx_model, written(tmp_path, old))
    assert exported[("imgpipe_baseline_mean_confidence", ())] == 0.93
    assert not any(key[0] == "imgpipe_baseline_confidence" for key in exported)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"predicted_share": {"0": 0.5, "1": 0.5}}, "not the model's"),
        ({"mean_confidence": "high"}, "mean_confidence must be a number"),
        ({"confidence_quantiles": {"0.1": 1.5}}, "confidence_quantiles must map"),
    ],
)
def test_a_baseline_that_does_not_fit_the_model_stops_the_start(
    onnx_model: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ImgpipeError, match=message):
        create_app(ServeConfig(model=onnx_model, baseline=written(tmp_path, SUMMARY | change)))
    with pytest.raises(ImgpipeError, match="No such file"):
        create_app(ServeConfig(model=onnx_model, baseline=tmp_path / "missing.json"))


def test_the_checkouts_baseline_is_the_default_for_the_checkouts_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("vars:\n  - paths:\n      onnx: models/model.onnx\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "drift_baseline.json").write_text("{}")

    def chosen(*options: str) -> Path | None:
        return _served_baseline(build_parser().parse_args(["serve", *options]))

    assert chosen() == Path("metrics/drift_baseline.json")
    assert chosen("--no-baseline") is None
    assert chosen("--model", "other.onnx") is None  # another model's baseline would not fit
    assert chosen("--model", "other.onnx", "--baseline", "b.json") == Path("b.json")
    (tmp_path / "metrics" / "drift_baseline.json").unlink()
    assert chosen() is None
