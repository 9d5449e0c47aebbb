"""Near-duplicates across splits and classes: resized, re-encoded and blurred copies found with
their distance, different images and copies within one split and class not reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from imgpipe.data.data_report import data_report
from imgpipe.data.near_duplicates import Place, near_duplicate_pairs
from imgpipe.data.preprocess import write_split
from imgpipe.data.samples import list_samples


def photo(seed: int) -> Image.Image:
    """A photo-like image: smooth colour fields plus sensor noise."""
    rng = np.random.default_rng(seed)
    fields = Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8))
    smooth = np.asarray(fields.resize((300, 240), Image.Resampling.BICUBIC), dtype=int)
    noisy = smooth + rng.integers(-20, 20, smooth.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def test_copies_are_found_across_splits_and_classes_and_others_are_not(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for name in ("cat", "dog"):
        (raw / name).mkdir(parents=True)
    for seed in range(8):
        photo(seed).save(raw / "cat" / f"{seed}.png")
        photo(seed + 100).save(raw / "dog" / f"{seed}.png")
    original = photo(3)
    original.resize((200, 160)).save(raw / "cat" / "resized.jpg", quality=70)  # -> test split
    original.filter(ImageFilter.GaussianBlur(1)).save(raw / "dog" / "blurred.png")  # wrong class
    original.resize((250, 200)).save(raw / "cat" / "same_split.jpg", quality=80)  # not a leak
    shutil.copyfile(raw / "dog" / "5.png", raw / "cat" / "exact.png")  # identical: reported apart
    classes, found = list_samples(raw)
    moved = {"cat/resized.jpg"}
    splits = {
        "train": [s for s in found[None] if s.path.as_posix() not in moved],
        "test": [s for s in found[None] if s.path.as_posix() in moved],
    }
    outcomes = {
        split: write_split(raw, part, classes, tmp_path / split, image_size=64, channels=3)
        for split, part in splits.items()
    }
    report = data_report(classes, splits, outcomes, near_duplicate_distance=24)
    near = report["near_duplicates"]
    pairs = {tuple(c["file"] for c in pair["copies"]): pair["distance"] for pair in near["pairs"]}
    assert set(pairs) == {
        ("cat/3.png", "cat/resized.jpg"),  # across splits
        ("cat/3.png", "dog/blurred.png"),  # across classes
        ("cat/resized.jpg", "cat/same_split.jpg"),  # across splits
        ("cat/same_split.jpg", "dog/blurred.png"),  # across classes
        ("cat/resized.jpg", "dog/blurred.png"),  # both
    }
    assert near["pairs_count"] == 5 and near["max_distance_bits"] == 24
    assert all(0 < distance <= 24 for distance in pairs.values())
    assert [p["distance"] for p in near["pairs"]] == sorted(p["distance"] for p in near["pairs"])
    assert report["duplicate_groups"] == 1  # the identical copy, listed with the exact ones
    assert "near_duplicates" not in data_report(classes, splits, outcomes)  # off when None


def test_the_distance_is_counted_in_bits_and_places_decide() -> None:
    zero, three_bits = "00" * 32, "07" + "00" * 31
    places = [
        Place("train", 0, "a"),
        Place("test", 0, "b"),
        Place("train", 0, "c"),
        Place("train", 1, "d"),
    ]
    hashes = [zero, three_bits, three_bits, "ff" * 32]
    assert near_duplicate_pairs(hashes, places, 3) == [(1, 2, 0), (0, 1, 3)]  # closest first
    assert near_duplicate_pairs(hashes, places, 2) == [(1, 2, 0)]
    # The same place, or pixel-identical images, are no near-duplicate pair.
    assert near_duplicate_pairs([zero, zero], [Place("train", 0, "a")] * 2, 5) == []
    many = [f"{i:064x}" for i in range(300)]  # more rows than one chunk
    found = near_duplicate_pairs(many, [Place(str(i % 2), 0, str(i)) for i in range(300)], 1)
    assert len(found) == sum(
        1 for i in range(300) for j in range(i + 1, 300) if (i ^ j).bit_count() <= 1 and (i - j) % 2
    )
