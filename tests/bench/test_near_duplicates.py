"""python -m bench near-duplicates: decoding with and without the hash, and the search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main as bench_main


def test_the_search_finds_the_expected_pairs_and_the_printed_figures_are_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    arguments = ["--images", "24", "--size", "40", "--target", "32", "--workers", "2"]
    assert (
        bench_main(["near-duplicates", *arguments, "--distance", "256", "--output", str(out)]) == 0
    )
    results = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == results
    assert results["images"] == 24 and results["max_distance_bits"] == 256
    assert results["workers"] == 2
    # At 256 bits every pair but the pixel-identical ones within one split is near.
    assert results["pairs_found"] == 24 * 23 // 2 - 3 * (8 * 7 // 2)
    assert results["decode_seconds"] > 0 and results["decode_and_hash_seconds"] > 0
    assert results["hash_overhead"] > 0
