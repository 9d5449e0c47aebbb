"""The feature log: the drift baseline's columns, rotation, dropping under pressure, and
imgpipe drift reading it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from imgpipe.data.splits import SplitArrays
from imgpipe.runtime.onnx_model import OnnxClassifier
from imgpipe.serving.app import create_app
from imgpipe.serving.settings import ServeConfig
from tests.conftest import make_split
from tests.serving.live import metric_value, uploads


def test_feature_log_has_the_drift_baseline_columns(
    onnx_model: Path, tmp_path: Path, test_split: SplitArrays
) -> None:
    from imgpipe.monitoring.features import feature_table

    log = tmp_path / "requests.jsonl"
    config = ServeConfig(
        model=onnx_model, feature_log=log, feature_log_max_bytes=20_000, feature_log_backups=50
    )
    with TestClient(create_app(config)) as c:
        for start in range(0, 24, 6):
            assert (
                c.post("/predict", files=uploads(test_split.images[start : start + 6])).status_code
                == 200
            )
    # Closing the app flushed the writer; small files forced rotations.
    files = sorted(tmp_path.glob("requests*.jsonl"))
    assert len(files) > 1 and (tmp_path / "requests.1.jsonl").is_file()
    logged = pd.concat([pd.read_json(f, lines=True) for f in files]).sort_values(
        "time", kind="stable"
    )
    expected = feature_table(OnnxClassifier(onnx_model), test_split.images[:24])
    assert len(logged) == 24
    assert set(expected.columns) <= set(logged.columns)
    key = ["brightness", "contrast"]
    pd.testing.assert_frame_equal(
        logged[expected.columns].sort_values(key).reset_index(drop=True),
        expected.sort_values(key).reset_index(drop=True),
        check_exact=False,
        atol=1e-5,
        check_dtype=False,
    )


def test_feature_log_rotation_stops_at_the_backup_cap(
    onnx_model: Path, tmp_path: Path, test_split: SplitArrays
) -> None:
    log = tmp_path / "requests.jsonl"
    config = ServeConfig(
        model=onnx_model, feature_log=log, feature_log_max_bytes=5_000, feature_log_backups=2
    )
    with TestClient(create_app(config)) as c:
        for start in range(0, 40, 2):  # ~2.5 kB of rows per request: far more than 3 files hold
            c.post("/predict", files=uploads(test_split.images[start : start + 2]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "requests.1.jsonl",
        "requests.2.jsonl",
        "requests.jsonl",
    ]
    for file in tmp_path.iterdir():
        assert 0 < file.stat().st_size <= 5_000 + 3_000  # a round of rows may pass the limit
        assert all(json.loads(line)["request"] for line in file.read_text().splitlines())


def test_rows_are_dropped_and_counted_when_the_writer_falls_behind(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from imgpipe.serving.feature_log import FeatureLog
    from imgpipe.serving.metrics import ServiceMetrics

    metrics = ServiceMetrics(["left", "right"])
    feature_log = FeatureLog(
        tmp_path / "requests.jsonl",
        ["left", "right"],
        max_bytes=10**6,
        backups=1,
        on_drop=metrics.feature_log_dropped.inc,
        capacity=2,
    )
    written = threading.Event()
    release = threading.Event()
    emit = feature_log._handler.emit

    def slow_emit(record: object) -> None:  # the disk stalls until released
        written.set()
        release.wait(10)
        emit(record)  # type: ignore[arg-type]

    feature_log._handler.emit = slow_emit  # type: ignore[method-assign]
    images = make_split(2).images[:3]
    outputs = (np.full((3, 2), 0.5), np.zeros((3, 4)))
    feature_log.submit({"request": "first"}, images, outputs)
    assert written.wait(10)  # the writer holds the first request; the queue takes two more
    for i in range(5):
        feature_log.submit({"request": f"r{i}"}, images, outputs)
    release.set()
    feature_log.close()
    rows = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert [row["request"] for row in rows[::3]] == ["first", "r0", "r1"]
    text = generate_latest(metrics.registry).decode()
    assert metric_value(text, "imgpipe_feature_log_dropped_images_total") == 3 * 3


def test_drift_reads_the_service_log_and_flags_inverted_traffic(
    onnx_model: Path, tmp_path: Path
) -> None:
    from imgpipe.cli import main
    from imgpipe.monitoring.features import feature_table
    from tests.conftest import pattern_images

    def traffic(seed: int) -> np.ndarray:
        return np.concatenate([pattern_images(60, c, seed=seed) for c in (0, 1)])

    reference = tmp_path / "reference.parquet"
    feature_table(OnnxClassifier(onnx_model), traffic(seed=1)).to_parquet(reference)
    outcomes = {}
    for name, images in {"same": traffic(seed=2), "inverted": 255 - traffic(seed=2)}.items():
        log = tmp_path / name / "requests.jsonl"
        with TestClient(create_app(ServeConfig(model=onnx_model, feature_log=log))) as c:
            for start in range(0, len(images), 30):
                c.post("/predict", files=uploads(images[start : start + 30]))
        outcomes[name] = main(
            [
                "drift",
                "--current",
                str(log),
                "--reference",
                str(reference),
                "--model",
                str(onnx_model),
                "--out",
                str(tmp_path / name / "report"),
            ]
        )
    assert outcomes == {"same": 0, "inverted": 1}
