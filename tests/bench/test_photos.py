"""python -m bench photos: the photo folder it builds, the settings it writes into params.yaml,
and (slow) the whole pipeline timed stage by stage against a baseline revision."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import photos
from bench.photos import CLASSES, bench_photos, configure, summarise, write_photos
from tests.conftest import REPO_ROOT


def test_the_photo_folder_has_every_class_at_the_size_asked(tmp_path: Path) -> None:
    folder = write_photos(tmp_path / "photos", 10, 48)
    assert sorted(p.name for p in folder.iterdir()) == sorted(CLASSES)
    files = sorted(folder.rglob("*.jpg"))
    assert len(files) == 10
    with Image.open(files[0]) as first:
        assert first.size == (48, 48) and first.mode == "RGB"
    again = write_photos(tmp_path / "again", 10, 48)
    assert [p.read_bytes() for p in sorted(again.rglob("*.jpg"))] == [
        p.read_bytes() for p in files
    ]  # seeded: both sides of a comparison see the same photos


def test_settings_land_on_their_keys_and_the_comments_stay(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((REPO_ROOT / "params.yaml").read_text())
    configure(params, {"data.source": "/photos", "epochs": "3", "preprocess.channels": "3"})
    text = params.read_text()
    assert "  source: /photos  # builtin:mnist5k" in text
    assert len(re.findall(r"^epochs: +3 +# passes", text, re.MULTILINE)) == 1
    assert "  epochs: 5 " in text  # the audit's epochs are another key
    assert "  channels: 3 " in text
    with pytest.raises(ValueError, match=r"no key 'data\.nothing'"):
        configure(params, {"data.nothing": "1"})


def run_record(seconds: dict[str, float], total: float, model: str = "a1") -> dict[str, object]:
    return {
        "seconds": seconds,
        "total_seconds": total,
        "test_accuracy": [0.9, 0.8, 0.95],
        "outputs_sha256": {"models/model.onnx": model},
    }


def test_ratios_are_the_baseline_over_the_new_seconds() -> None:
    new = run_record({"train": 10, "evaluate": 5}, 16)
    old = run_record({"train": 10, "evaluate": 20}, 32)
    results = summarise({"baseline": [old], "new": [new]}, 40, 64, "resnet18", None)
    assert results["speedup"] == {"train": 1.0, "evaluate": 4.0}
    # the whole dvc repro as timed, DVC's start before the first stage included
    assert results["total_seconds"] == 16 and results["baseline_total_seconds"] == 32
    assert results["total_speedup"] == 2.0
    assert results["weights"].startswith("random")


def test_rounds_are_summarised_by_their_medians_and_their_outputs_compared() -> None:
    new = [
        run_record({"train": 10}, 16),
        run_record({"train": 30}, 40),
        run_record({"train": 11}, 18),
    ]
    old = [run_record({"train": 20}, 30, model=name) for name in ("b1", "b1", "b2")]
    results = summarise({"baseline": old, "new": new}, 40, 64, "resnet18", None)
    assert results["rounds"] == 3
    assert results["seconds"] == {"train": 11} and results["total_seconds"] == 18
    assert results["total_seconds_per_round"] == [16, 40, 18]
    assert results["speedup"] == {"train": round(20 / 11, 2)}
    assert results["identical_reruns"] is True
    assert results["baseline_identical_reruns"] is False  # b2 differs from b1


def test_rounds_alternate_which_side_goes_first_each_in_a_fresh_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []

    def fake_checkout(destination: Path, revision: str | None) -> Path:
        (destination / "weights").mkdir(parents=True)
        (destination / "params.yaml").write_text("epochs: 1\n")
        return destination

    def fake_time(repo: Path, clock: object) -> dict[str, object]:
        order.append(repo.name)
        return run_record({"train": 1.0}, 2.0)

    monkeypatch.setattr(photos, "checkout", fake_checkout)
    monkeypatch.setattr(photos, "configure", lambda params, settings: None)
    monkeypatch.setattr(photos, "time_stages", fake_time)
    results = bench_photos(
        tmp_path,
        photos=8,
        image_size=32,
        model="test_resnet",
        weights=None,
        epochs=1,
        baseline="HEAD",
        rounds=3,
    )
    assert order == ["baseline-1", "new-1", "new-2", "baseline-2", "baseline-3", "new-3"]
    kept = sorted(path.name for path in tmp_path.iterdir() if "-" in path.name)
    assert kept == ["baseline-3", "new-3", "test_resnet-random.pth"]  # earlier copies removed
    assert results["rounds"] == 3 and results["identical_reruns"] is True


@pytest.mark.slow
def test_the_whole_pipeline_runs_and_is_timed_on_both_sides(tmp_path: Path) -> None:
    results = bench_photos(
        tmp_path,
        photos=160,
        image_size=32,
        model="test_resnet",
        weights=None,
        epochs=2,
        baseline="HEAD",
    )
    stages = list(results["seconds"])
    assert stages[:2] == ["download", "preprocess"] and "drift-baseline" in stages
    assert all(seconds > 0 for seconds in results["seconds"].values())
    assert results["total_seconds"] >= sum(results["seconds"].values()) - 0.5  # one dvc repro
    assert set(results["speedup"]) == set(stages)
    low, accuracy, high = sorted(results["test_accuracy"])
    assert 0 <= low <= accuracy <= high <= 1
    # The new side ran the working tree's code with finetune: head on the photos.
    params = (tmp_path / "new-1/params.yaml").read_text()
    assert "\nfinetune: head " in params and "  channels: 3 " in params
    processed = np.load(tmp_path / "new-1/data/processed/test/images.npy", mmap_mode="r")
    assert processed.shape[1:] == (32, 32, 3)
