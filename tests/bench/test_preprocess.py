"""python -m bench preprocess: one worker against several, on the same synthetic JPEGs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main as bench_main


def test_both_runs_decode_every_image_and_the_printed_figures_are_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    arguments = ["--images", "24", "--size", "40", "--target", "32", "--workers", "2"]
    files = ["--folder", str(tmp_path / "jpegs"), "--output", str(out)]
    assert bench_main(["preprocess", *arguments, *files]) == 0
    results = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == results
    assert len(list((tmp_path / "jpegs").glob("*/*.jpg"))) == 24  # kept in --folder
    assert results["images"] == 24
    one, every = results["one_worker"], results["all_workers"]
    assert (one["workers"], every["workers"]) == (1, 2)
    for run in (one, every):
        assert run["array_bytes"] == 24 * 32 * 32 * 3 + 128  # npy header: 128 B
        assert run["seconds"] > 0 and run["images_per_second"] > 0
        assert run["peak_rss_bytes"] > run["array_bytes"]  # the sampler saw this process at least
    assert results["speedup"] > 0
