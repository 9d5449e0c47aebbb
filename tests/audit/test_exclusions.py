"""audit.exclude: only training images suspected of a wrong label are dropped, and train
reads the list back or names what is wrong with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imgpipe.audit.exclusions import (
    drop_files,
    read_exclusions,
    training_exclusions,
    write_exclusions,
)
from imgpipe.audit.suspects import SUSPECT_COLUMNS
from imgpipe.errors import ImgpipeError
from tests.conftest import make_split

SUSPECTS = pd.DataFrame(
    [
        ["left/3.png", "train", "left", "right", "label", 0.99],
        ["right/1.png", "train", "right", "left", "label+outlier", 0.97],
        ["left/5.png", "train", "left", "left", "outlier", 0.999],
        ["left/0.png", "val", "left", "right", "label", 0.98],
        ["right/2.png", "test", "right", "left", "label", 0.96],
    ],
    columns=SUSPECT_COLUMNS,
)


def test_only_training_label_suspects_are_excluded() -> None:
    assert training_exclusions(SUSPECTS, exclude=True) == ["left/3.png", "right/1.png"]
    assert training_exclusions(SUSPECTS, exclude=False) == []


def test_train_drops_the_listed_rows_and_keeps_the_rest_in_order(tmp_path: Path) -> None:
    split = make_split(4)
    path = tmp_path / "excluded.json"
    write_exclusions(path, training_exclusions(SUSPECTS, exclude=True), exclude=True)
    kept = drop_files(split, read_exclusions(path))
    assert kept.files == [
        "left/0.png",
        "left/1.png",
        "left/2.png",
        "right/0.png",
        "right/2.png",
        "right/3.png",
    ]
    rows = [split.files.index(name) for name in kept.files]
    assert np.array_equal(kept.images, split.images[rows])
    assert np.array_equal(kept.labels, split.labels[rows])
    assert drop_files(split, []) is split


def test_a_list_from_another_dataset_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImgpipeError, match=r"1 file\(s\) the train split does not have"):
        drop_files(make_split(2), ["left/9.png"])
    with pytest.raises(ImgpipeError, match="not found; run the audit stage"):
        read_exclusions(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"exclude": true}')
    with pytest.raises(ImgpipeError, match="not the audit's exclusion list"):
        read_exclusions(tmp_path / "bad.json")
    (tmp_path / "worse.json").write_text("{not json")
    with pytest.raises(ImgpipeError, match="not the audit's exclusion list"):
        read_exclusions(tmp_path / "worse.json")
