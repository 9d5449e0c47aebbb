"""gs:// against gcp-storage-emulator on loopback; Hugging Face datasets converted locally (the
hub itself is out of reach here, so everything after the fetch is tested)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgpipe.data.sources import SourceError, fetch, write_hf_dataset
from tests.conftest import gcs_emulator, write_image_folder


@pytest.fixture(scope="module")
def gcs() -> Iterator[object]:
    with gcs_emulator("imgpipe-test"):
        from gcsfs.core import GCSFileSystem

        yield GCSFileSystem(token="anon")


def test_bucket_prefix_becomes_an_image_folder(gcs: object, tmp_path: Path) -> None:
    from imgpipe.data.video import FrameRate, iter_frames
    from tests.data.video_clips import write_clip

    tree = write_image_folder(tmp_path / "tree", per_class=2)
    (tree / "left" / ".DS_Store").write_bytes(b"junk")
    write_clip(tree / "right" / "visit.mp4", frames=6)  # a bucket may hold clips too
    for file in tree.rglob("*"):
        if file.is_file():
            gcs.put_file(str(file), f"imgpipe-test/xrays/{file.relative_to(tree).as_posix()}")  # type: ignore[attr-defined]
    fetch("gs://imgpipe-test/xrays", tmp_path / "raw")
    files = sorted(
        p.relative_to(tmp_path / "raw").as_posix()
        for p in (tmp_path / "raw").rglob("*")
        if p.is_file()
    )
    assert files == [
        "left/000.png",
        "left/001.png",
        "right/000.png",
        "right/001.png",
        "right/visit.mp4",
    ]
    assert (tmp_path / "raw/left/000.png").read_bytes() == (tree / "left/000.png").read_bytes()
    clip = tmp_path / "raw/right/visit.mp4"
    assert len(list(iter_frames(clip, FrameRate(frames_per_second=0)))) == 6


def test_empty_prefix_is_named(gcs: object, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="'gs://imgpipe-test/nothing-here' holds no images"):
        fetch("gs://imgpipe-test/nothing-here", tmp_path / "raw")


def hub_like_dataset() -> object:
    import datasets

    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=["cardboard", "glass"])}
    )

    def rows(n: int) -> dict[str, list[object]]:
        return {
            "img": [
                Image.fromarray(np.full((12, 12, 3), 40 * i, dtype=np.uint8)) for i in range(n)
            ],
            "label": [i % 2 for i in range(n)],
        }

    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows(4), features=features),
            "test": datasets.Dataset.from_dict(rows(2), features=features),
        }
    )


def test_hugging_face_splits_and_class_names_become_folders(tmp_path: Path) -> None:
    write_hf_dataset(hub_like_dataset(), tmp_path)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert files == [
        "test/cardboard/000000.png",
        "test/glass/000001.png",
        "train/cardboard/000000.png",
        "train/cardboard/000002.png",
        "train/glass/000001.png",
        "train/glass/000003.png",
    ]
    assert np.asarray(Image.open(tmp_path / "train/glass/000003.png")).max() == 120


def test_single_hugging_face_split_is_written_unsplit(tmp_path: Path) -> None:
    write_hf_dataset(hub_like_dataset()["train"], tmp_path)  # type: ignore[index]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cardboard", "glass"]


def test_dataset_without_class_labels_is_refused(tmp_path: Path) -> None:
    import datasets

    plain = datasets.Dataset.from_dict({"text": ["a"], "label": [0]})
    with pytest.raises(SourceError, match="needs an Image and a ClassLabel column"):
        write_hf_dataset(plain, tmp_path)
