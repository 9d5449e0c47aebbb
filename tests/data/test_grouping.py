"""Group-aware splitting: one patient's or clip's images never straddle splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgpipe.data.data_report import data_report
from imgpipe.data.preprocess import write_split
from imgpipe.data.samples import PreprocessError, Sample, list_samples
from imgpipe.data.splitting import assign_splits
from imgpipe.params import ParamsError, parse_params
from tests.test_params import committed


def patient_folder(root: Path, patients: int = 30, seed: int = 0) -> Path:
    """Two classes; each patient has 1-4 images (left/right eye, follow-ups), named like
    ``<patient>_<eye>_<visit>.png``, some in a sub-folder per clinic."""
    rng = np.random.default_rng(seed)
    for patient in range(patients):
        label = "disease" if patient % 3 == 0 else "healthy"  # imbalanced, like the real thing
        clinic = f"clinic{patient % 2}/" if patient % 5 else ""
        for visit in range(int(rng.integers(1, 5))):
            path = root / label / f"{clinic}{patient:03d}_{'LR'[visit % 2]}_{visit}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
    return root


def groups_of(samples: list[Sample]) -> set[str]:
    return {s.group for s in samples}


def test_no_group_in_two_splits_and_classes_stay_stratified(tmp_path: Path) -> None:
    _classes, found = list_samples(patient_folder(tmp_path), r"(\d+)_")
    splits = assign_splits(found, 0.2, 0.2, seed=0, grouped=True)
    train, val, test = (groups_of(splits[s]) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 30
    for split in ("val", "test"):  # both classes in every split
        assert {s.label for s in splits[split]} == {0, 1}
    images = sum(len(s) for s in splits.values())
    assert 0.1 <= len(splits["test"]) / images <= 0.3  # about the fraction, whole groups
    assert assign_splits(found, 0.2, 0.2, seed=0, grouped=True) == splits  # deterministic
    assert assign_splits(found, 0.2, 0.2, seed=1, grouped=True) != splits


def test_odd_patterns_and_unmatched_paths(tmp_path: Path) -> None:
    root = patient_folder(tmp_path)
    (root / "healthy" / "scan.png").write_bytes(
        (root / "healthy").rglob("*.png").__next__().read_bytes()
    )
    _, found = list_samples(root, r"(\d+)_")
    odd = [s for s in found[None] if s.path.name == "scan.png"]
    assert odd[0].group_found is None and odd[0].group == "healthy/scan.png"  # its own group
    _, by_folder = list_samples(root, r"^([^/]+)/")  # a sub-folder per group
    assert {s.group for s in by_folder[None] if s.group_found} == {"clinic0", "clinic1"}
    same = [s for s in found[None] if s.path.name.startswith("001_")]
    assert len({s.group for s in same}) == 1


def test_too_few_groups_is_explained(tmp_path: Path) -> None:
    _, found = list_samples(patient_folder(tmp_path, patients=3), r"(\d+)_")
    with pytest.raises(PreprocessError, match=r"from 3 groups .* at least 5 groups"):
        assign_splits(found, 0.1, 0.2, seed=0, grouped=True)


def test_report_counts_groups_and_flags_groups_across_classes_and_splits(tmp_path: Path) -> None:
    root = patient_folder(tmp_path)
    copy = next((root / "healthy").rglob("001_*.png"))  # patient 1 also filed under disease
    (root / "disease" / copy.name).write_bytes(copy.read_bytes())
    classes, found = list_samples(root, r"(\d+)_")
    splits = assign_splits(found, 0.2, 0.2, seed=0, grouped=True)
    outcomes = {
        split: write_split(
            root, samples, classes, tmp_path / "out" / split, image_size=8, channels=1
        )
        for split, samples in splits.items()
    }
    report = data_report(classes, splits, outcomes, grouped=True)
    groups = report["groups"]
    assert sum(groups["per_split"].values()) == 30
    assert groups["spanning_classes"] == [{"group": "001", "classes": ["disease", "healthy"]}]
    assert groups["in_several_splits_count"] == 0 and groups["unmatched_count"] == 0
    assert report["split_fractions"]["test"] == pytest.approx(
        report["totals"]["test"] / sum(report["totals"].values()), abs=1e-4
    )
    # A pre-split source keeps its splits; a patient in two of them is reported, not moved.
    pre = {
        "train": splits["train"] + splits["test"][:1],
        "val": splits["val"],
        "test": splits["test"],
    }
    moved = data_report(classes, pre, {**outcomes, "train": outcomes["train"]}, grouped=True)
    assert moved["groups"]["in_several_splits_count"] >= 1


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("(unclosed", "not a regular expression"), (r"\d+_", "needs a capture group")],
)
def test_bad_group_patterns_are_named(pattern: str, message: str) -> None:
    raw = committed()
    raw["preprocess"]["group_pattern"] = pattern
    with pytest.raises(ParamsError, match=rf"'preprocess.group_pattern': {message}"):
        parse_params(raw)
