"""python -m bench serve: the service under load at each concurrency against onnxruntime, and
int8 against fp32 in one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main as bench_main
from bench.serve import bench_serve, int8_over_fp32


def test_every_level_sends_its_requests_through_the_service(
    tiny_onnx: Path, tmp_path: Path
) -> None:
    results = bench_serve(
        tiny_onnx,
        concurrency=[1, 4],
        requests=40,
        max_batch=64,
        batch_window_ms=2.0,
        threads=0,
        log_dir=tmp_path,
    )
    assert results["onnxruntime_batch"]["batch"] == 64
    assert results["onnxruntime_batch"]["images_per_second"] > 0
    assert [level["concurrency"] for level in results["levels"]] == [1, 4]
    for level in results["levels"]:
        assert level["errors"] == 0 and level["requests"] == 40
        assert 0 < level["latency_ms"]["p50"] <= level["latency_ms"]["p99"]
        assert level["requests_per_second"] > 0 and level["ratio_to_onnxruntime_batch"] > 0
    # The service logged every image it classified: 40 per level, after 2 per client to warm up.
    logged = [line for f in tmp_path.glob("requests*.jsonl") for line in f.read_text().splitlines()]
    assert len(logged) == (2 * 1 + 40) + (2 * 4 + 40)


def test_int8_is_served_alike_and_the_printed_figures_are_written(
    tiny_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    arguments = ["--model", str(tiny_onnx), "--requests", "20", "--concurrency", "2", "--int8"]
    assert bench_main(["serve", *arguments, "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == results
    fp32, int8 = results["fp32"], results["int8"]
    assert fp32["model"] == str(tiny_onnx) and int8["model"].endswith("int8.onnx")
    for served in (fp32, int8):
        [level] = served["levels"]
        assert level["errors"] == 0 and level["requests"] == 20
        assert served["onnxruntime_batch"]["images_per_second"] > 0
    assert results["int8_over_fp32"]["onnxruntime_batch"] > 0
    assert results["int8_over_fp32"]["served_at_highest_concurrency"] > 0


def test_int8_over_fp32_compares_the_baselines_and_the_highest_concurrency() -> None:
    def figures(baseline: float, rates: list[float]) -> dict[str, object]:
        levels = [{"requests_per_second": rate} for rate in rates]
        return {"onnxruntime_batch": {"images_per_second": baseline}, "levels": levels}

    fp32, int8 = figures(100, [50, 40]), figures(250, [900, 10])
    assert int8_over_fp32(fp32, int8) == {
        "onnxruntime_batch": 2.5,
        "served_at_highest_concurrency": 0.25,
    }
