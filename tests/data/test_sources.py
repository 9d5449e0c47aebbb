from pathlib import Path

import pytest

from imgpipe.data.layout import split_folders
from imgpipe.data.sources import SourceError, fetch
from tests.conftest import write_image_folder


def test_builtin_mnist5k_writes_5000_digits(tmp_path: Path) -> None:
    fetch("builtin:mnist5k", tmp_path / "raw")
    classes = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert classes == [str(d) for d in range(10)]
    assert all(len(list((tmp_path / "raw" / c).glob("*.png"))) == 500 for c in classes)


def test_unknown_builtin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unknown built-in dataset 'builtin:cifar'"):
        fetch("builtin:cifar", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_local_folder_is_copied_without_junk(tmp_path: Path) -> None:
    source = write_image_folder(tmp_path / "source", per_class=2)
    (source / ".DS_Store").write_bytes(b"junk")
    (source / "left" / "._000.png").write_bytes(b"appledouble")
    (source / "__MACOSX" / "left").mkdir(parents=True)
    (source / "__MACOSX" / "left" / "x.png").write_bytes(b"junk")
    fetch(str(source), tmp_path / "raw")
    copied = sorted(
        p.relative_to(tmp_path / "raw").as_posix()
        for p in (tmp_path / "raw").rglob("*")
        if p.is_file()
    )
    assert copied == ["left/000.png", "left/001.png", "right/000.png", "right/001.png"]


def test_missing_or_empty_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="'/nonexistent/images' is not a folder"):
        fetch("/nonexistent/images", tmp_path / "raw")
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(SourceError, match="holds no images in class folders"):
        fetch(str(tmp_path / "empty"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_pre_split_layout_is_recognised(tmp_path: Path) -> None:
    for split in ("train", "Validation", "test"):
        write_image_folder(tmp_path / split, per_class=1)
    assert sorted(split_folders(tmp_path)) == ["test", "train", "val"]
    assert split_folders(tmp_path / "train") == {}


def test_a_local_folder_is_copied_through_its_links_and_outside_links_are_reported(
    tmp_path: Path,
) -> None:
    """Links are followed for a folder the user chose (a linked folder of images is not lost),
    a link back to an ancestor does not loop, and links leaving the folder reach the data
    report with their targets."""
    from imgpipe.data.data_report import data_report
    from imgpipe.data.layout import read_source_notes
    from imgpipe.data.preprocess import write_split
    from imgpipe.data.samples import list_samples

    source = write_image_folder(tmp_path / "source")
    outside = write_image_folder(tmp_path / "elsewhere")
    (source / "left" / "more").symlink_to(outside / "left")  # a folder outside
    (source / "right" / "extra.png").symlink_to(outside / "right" / "000.png")  # a file outside
    (source / "right" / "inside.png").symlink_to(source / "right" / "001.png")  # stays inside
    (source / "left" / "loop").symlink_to(source)  # an ancestor: visited once, not forever
    fetch(str(source), tmp_path / "raw")
    copied = sorted(
        p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").rglob("*.png")
    )
    assert len(copied) == 6 + 6 + 6 + 2  # both classes, the linked folder, two linked files
    assert "left/more/005.png" in copied and not any("loop" in c for c in copied)
    assert not any(p.is_symlink() for p in (tmp_path / "raw").rglob("*"))  # real copies
    notes = read_source_notes(tmp_path / "raw")
    assert notes == {
        "links_outside_source": [
            {"path": "left/more", "target": str((outside / "left").resolve())},
            {"path": "right/extra.png", "target": str((outside / "right" / "000.png").resolve())},
        ]
    }
    classes, found = list_samples(tmp_path / "raw")
    assert classes == ["left", "right"] and len(found[None]) == 20  # the notes are no class
    outcome = write_split(
        tmp_path / "raw", found[None], classes, tmp_path / "t", image_size=8, channels=1
    )
    report = data_report(classes, {"train": found[None]}, {"train": outcome}, source_notes=notes)
    assert report["links_outside_source"] == notes["links_outside_source"]


def test_files_below_walks_every_depth_sorted_without_os_junk(tmp_path: Path) -> None:
    from imgpipe.data.layout import files_below

    for name in ["b/2.png", "a/deep/1.png", "a/0.png", "__MACOSX/a/0.png", ".cache/x", "._0.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    assert [p.relative_to(tmp_path).as_posix() for p in files_below(tmp_path)] == [
        "a/0.png",
        "a/deep/1.png",
        "b/2.png",
    ]
