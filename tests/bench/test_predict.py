"""python -m bench predict: imgpipe predict into a CSV against onnxruntime on the same images."""

from __future__ import annotations

import csv
from pathlib import Path

from bench.predict import bench_predict
from tests.bench.clock import FakeClock


def test_predict_is_timed_against_onnxruntime_on_the_same_images(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    clock = FakeClock([1, 4])  # onnxruntime 1 s, imgpipe predict 4 s
    results = bench_predict(tiny_onnx, tmp_path / "images", count=20, clock=clock)
    assert clock.calls == 4
    assert results["images"] == 20 and results["input"] == [32, 32, 1]
    assert results["onnxruntime_images_per_second"] == 20.0
    assert results["predict_images_per_second"] == 5.0 and results["ratio"] == 0.25
    with (tmp_path / "predictions.csv").open(newline="") as table:
        rows = list(csv.DictReader(table))
    assert len(rows) == 20 and not any(row["error"] for row in rows)
    assert all(row["class_1"] in ("left", "right") for row in rows)

    again = bench_predict(tiny_onnx, tmp_path / "images", count=20)  # the real clock
    assert len(list((tmp_path / "images").iterdir())) == 20  # the PNGs were reused
    assert again["onnxruntime_images_per_second"] > 0 and again["predict_images_per_second"] > 0
