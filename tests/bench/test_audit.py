"""python -m bench audit: the whole audit and its bare K-fold fits alternate within each round,
the ratio is the median of the rounds', and the planted flips are scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main as bench_main
from bench.audit import bench_audit, synthetic_features
from tests.bench.clock import FakeClock


def test_rounds_alternate_and_the_ratio_is_a_median() -> None:
    # Per round: the bare fits, then the audit: 2 s vs 3 s, 1 s vs 4 s, 2 s vs 2 s.
    clock = FakeClock([2, 3, 1, 4, 2, 2])
    results = bench_audit(300, dims=16, classes=3, folds=3, flipped=0.05, rounds=3, clock=clock)
    assert clock.calls == 12
    assert results["audit_over_fits_per_round"] == [1.5, 4.0, 1.0]
    assert results["audit_over_fits"] == 1.5
    assert results["audit_seconds"] == 3.0 and results["kfold_fits_seconds"] == 2.0
    assert results["flipped"] == 15
    assert results["recall"] >= 0.5  # separable features: the flips are found


def test_synthetic_flips_change_exactly_the_listed_rows() -> None:
    _, truth, given, flips = synthetic_features(500, 8, 4, 0.02)
    assert len(flips) == 10
    assert set((given != truth).nonzero()[0]) == set(flips.tolist())


def test_the_command_prints_and_keeps_the_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit.json"
    bench_main(
        [
            "audit",
            "--images",
            "200",
            "--dims",
            "8",
            "--classes",
            "3",
            "--folds",
            "2",
            "--rounds",
            "1",
            "--output",
            str(out),
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["images"] == 200 and printed["folds"] == 2
