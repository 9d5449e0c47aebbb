import shutil
from pathlib import Path

import numpy as np
import pytest

from imgpipe.data.data_report import data_report
from imgpipe.data.preprocess import write_split
from imgpipe.data.samples import PreprocessError, list_samples
from imgpipe.data.splits import load_split
from imgpipe.data.splitting import assign_splits
from tests.conftest import write_image_folder


def test_unsplit_tree_is_split_stratified_and_reproducibly(image_folder: Path) -> None:
    (image_folder / "left" / "nested").mkdir()
    (image_folder / "left" / "000.png").rename(image_folder / "left" / "nested" / "000.png")
    classes, found = list_samples(image_folder)
    assert classes == ["left", "right"]
    assert len(found[None]) == 12  # the nested file still belongs to 'left'
    first = assign_splits(found, 1 / 6, 2 / 6, seed=3)
    assert {split: len(s) for split, s in first.items()} == {"train": 6, "val": 2, "test": 4}
    assert sorted(s.label for s in first["test"]) == [0, 0, 1, 1]
    assert assign_splits(found, 1 / 6, 2 / 6, seed=3) == first
    assert assign_splits(found, 1 / 6, 2 / 6, seed=4) != first


def test_pre_split_source_keeps_its_splits_and_gets_a_val_split(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", per_class=10)
    write_image_folder(tmp_path / "test", per_class=2)
    _, found = list_samples(tmp_path)
    splits = assign_splits(found, 0.2, 0.3, seed=0)
    assert {split: len(s) for split, s in splits.items()} == {"train": 16, "val": 4, "test": 4}
    assert all(s.path.parts[0] == "test" for s in splits["test"])


def test_too_few_images_to_stratify_is_explained(tmp_path: Path) -> None:
    write_image_folder(tmp_path, per_class=1)
    _, found = list_samples(tmp_path)
    with pytest.raises(PreprocessError, match="cannot carve a stratified test split"):
        assign_splits(found, 0.1, 0.2, seed=0)


def test_broken_files_are_skipped_and_reported(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "left" / "empty.png").write_bytes(b"")
    (image_folder / "right" / "notes.png").write_text("not an image")
    classes, found = list_samples(image_folder)
    samples = found[None]
    outcome = write_split(
        image_folder, samples, classes, tmp_path / "out" / "train", image_size=16, channels=1
    )
    assert sorted((e["file"], e["reason"]) for e in outcome.skipped) == [
        ("left/empty.png", "empty file"),
        ("right/notes.png", "not an image (content not recognised)"),
    ]
    split = load_split(tmp_path / "out" / "train")
    assert split.images.shape == (12, 16, 16, 1)
    assert split.images.dtype == np.uint8
    assert np.bincount(split.labels).tolist() == [6, 6]
    assert "left/empty.png" not in split.files

    report = data_report(classes, {"train": samples}, {"train": outcome})
    assert report["counts"] == {"train": {"left": 6, "right": 6}}
    assert report["skipped_count"] == 2
    assert report["empty_classes"] == []


def test_parallel_decoding_writes_the_same_bytes(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "right" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    classes, found = list_samples(image_folder)
    one = write_split(
        image_folder, found[None], classes, tmp_path / "one", image_size=8, channels=1
    )
    two = write_split(
        image_folder, found[None], classes, tmp_path / "two", image_size=8, channels=1, workers=2
    )
    assert one == two
    for name in ("images.npy", "labels.npy", "meta.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_same_image_in_two_classes_or_splits_is_reported(
    image_folder: Path, tmp_path: Path
) -> None:
    shutil.copyfile(image_folder / "left" / "000.png", image_folder / "right" / "copy.png")
    # A copy within one class and split is no leak: it must not be reported.
    shutil.copyfile(image_folder / "right" / "005.png", image_folder / "right" / "005b.png")
    classes, found = list_samples(image_folder)
    test = [s for s in found[None] if s.path.name == "copy.png"]
    splits = {"train": [s for s in found[None] if s not in test], "test": test}
    assert {"right/005.png", "right/005b.png"} <= {s.path.as_posix() for s in splits["train"]}
    outcomes = {
        split: write_split(image_folder, s, classes, tmp_path / split, image_size=8, channels=1)
        for split, s in splits.items()
    }
    report = data_report(classes, splits, outcomes)
    assert report["duplicate_groups"] == 1
    leak = report["duplicates_across_classes_or_splits"][0]
    assert leak["across"] == ["classes", "splits"]
    assert [c["file"] for c in leak["copies"]] == ["left/000.png", "right/copy.png"]


def test_bombs_and_truncated_files_are_listed_with_their_reason(
    image_folder: Path, tmp_path: Path
) -> None:
    from tests.serving.live import big_png_header

    (image_folder / "left" / "bomb.png").write_bytes(big_png_header(9000, 9000))
    whole = (image_folder / "right" / "000.png").read_bytes()
    (image_folder / "right" / "cut.png").write_bytes(whole[: len(whole) // 2])
    classes, found = list_samples(image_folder)
    outcome = write_split(
        image_folder, found[None], classes, tmp_path / "out", image_size=8, channels=1
    )
    reasons = {entry["file"]: entry["reason"] for entry in outcome.skipped}
    assert reasons.keys() == {"left/bomb.png", "right/cut.png"}
    assert reasons["left/bomb.png"] == ("9000x9000 pixels exceeds the limit of 64000000")
    assert reasons["right/cut.png"].startswith("cannot decode: ")
    report = data_report(classes, {"train": found[None]}, {"train": outcome})
    assert report["skipped_count"] == 2
    assert [e["file"] for e in report["skipped"]] == ["left/bomb.png", "right/cut.png"]
    assert report["counts"]["train"] == {"left": 6, "right": 6}


def test_empty_class_is_reported(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "ghost").mkdir()
    (image_folder / "ghost" / "bad.jpg").write_bytes(b"")
    classes, found = list_samples(image_folder)
    outcome = write_split(
        image_folder, found[None], classes, tmp_path / "t", image_size=8, channels=1
    )
    assert data_report(classes, {"train": found[None]}, {"train": outcome})["empty_classes"] == [
        "ghost"
    ]


def test_an_empty_class_folder_is_copied_and_named_in_the_report(tmp_path: Path) -> None:
    from imgpipe.data.sources import fetch

    source = write_image_folder(tmp_path / "source")
    (source / "unlabelled_yet").mkdir()  # a class folder nobody filled
    fetch(str(source), tmp_path / "raw")
    classes, found = list_samples(tmp_path / "raw")
    assert classes == ["left", "right", "unlabelled_yet"]
    outcome = write_split(
        tmp_path / "raw", found[None], classes, tmp_path / "t", image_size=8, channels=1
    )
    report = data_report(classes, {"train": found[None]}, {"train": outcome})
    assert report["empty_classes"] == ["unlabelled_yet"]


def test_a_split_made_by_groups_lists_each_images_group(image_folder: Path, tmp_path: Path) -> None:
    """Evaluation scores and resamples whole patients/clips: it needs each row's group, and
    only when the split was made by groups (a skipped file takes its group with it)."""
    (image_folder / "left" / "empty.png").write_bytes(b"")
    classes, found = list_samples(image_folder, group_pattern=r"^(\d\d)")
    samples = found[None]
    write_split(
        image_folder, samples, classes, tmp_path / "g", image_size=8, channels=1, grouped=True
    )
    grouped = load_split(tmp_path / "g")
    assert grouped.groups is not None and len(grouped.groups) == len(grouped) == 12
    assert grouped.groups == [f.split("/")[1][:2] for f in grouped.files]  # '000.png' -> '00'
    write_split(image_folder, samples, classes, tmp_path / "u", image_size=8, channels=1)
    assert load_split(tmp_path / "u").groups is None
