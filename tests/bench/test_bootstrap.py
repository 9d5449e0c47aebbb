"""python -m bench bootstrap: the vectorised intervals per split size, grouped and not, and
rounds alternating with a scikit-learn loop that computes the same intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.__main__ import main as bench_main
from bench.bootstrap import bench_bootstrap, sklearn_loop, synthetic_predictions
from imgpipe.evaluation.bootstrap import confidence_intervals
from tests.bench.clock import FakeClock


def test_the_loop_baseline_computes_the_same_intervals() -> None:
    labels, probabilities = synthetic_predictions(np.random.default_rng(0), 200, 4)
    vectorised = confidence_intervals(labels, probabilities, resamples=50)
    looped = sklearn_loop(labels, probabilities, 50)
    assert set(looped) == {"accuracy", "macro_f1", "macro_roc_auc"}
    for name, (low, high) in looped.items():
        assert vectorised[name] == pytest.approx((low, high), abs=1e-6)


def test_each_size_is_timed_grouped_and_not_and_the_speedup_is_a_median_of_rounds() -> None:
    # Seconds of: 40 images ungrouped x3, grouped x3; 60 images likewise; then per round the
    # loop and the vectorised intervals: 10 s against 1 s, 30 s against 2 s, 40 s against 1 s.
    clock = FakeClock([1, 3, 8, 2, 2, 2, 5, 7, 6, 9, 1, 4, 10, 1, 30, 2, 40, 1])
    results = bench_bootstrap(
        [40, 60], classes=3, resamples=20, group_size=5, loop_images=30, rounds=3, clock=clock
    )
    assert clock.calls == 36
    assert results["confidence_intervals_seconds"] == {  # medians
        "40": {"ungrouped": 3.0, "grouped": 2.0},
        "60": {"ungrouped": 6.0, "grouped": 4.0},
    }
    assert results["sklearn_loop_seconds"] == 30.0 and results["vectorised_seconds"] == 1.0
    # The median of the rounds' speed-ups; the ratio of the medians would be 30.
    assert results["speedup_per_round"] == [10.0, 15.0, 40.0] and results["speedup"] == 15.0


def test_the_command_prints_and_writes_the_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    arguments = ["--images", "50", "--classes", "3", "--resamples", "20", "--loop-images", "40"]
    assert bench_main(["bootstrap", *arguments, "--rounds", "1", "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == results
    assert set(results["confidence_intervals_seconds"]) == {"50"}
    assert results["group_size"] == 5 and results["resamples"] == 20
    assert results["sklearn_loop_seconds"] > 0 and results["speedup"] > 0
