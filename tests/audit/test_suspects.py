"""Suspects from out-of-sample probabilities: flips found, clean data quiet, outliers found,
the table ranked and counted."""

from __future__ import annotations

import numpy as np
import pandas as pd

from imgpipe.audit.suspects import SUSPECT_COLUMNS, AuditedImages, count_suspects, find_suspects


def audited(labels: np.ndarray, probabilities: np.ndarray, features: np.ndarray) -> AuditedImages:
    count = len(labels)
    return AuditedImages(
        files=[f"{labels[i]}/{i:04d}.png" for i in range(count)],
        splits=["train"] * (count - 100) + ["test"] * 100,
        labels=labels,
        probabilities=probabilities,
        features=features,
        classes=["a", "b", "c"],
    )


def confident_model(truth: np.ndarray, seed: int) -> np.ndarray:
    """Probabilities of a model 90-99% sure of the true class."""
    rng = np.random.default_rng(seed)
    probabilities = rng.uniform(0.0, 0.05, (len(truth), 3))
    probabilities[np.arange(len(truth)), truth] = rng.uniform(0.9, 0.99, len(truth))
    normalised: np.ndarray = probabilities / probabilities.sum(1, keepdims=True)
    return normalised


def clustered_features(truth: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clusters: np.ndarray = rng.normal(0, 0.3, (len(truth), 8)) + np.eye(3, 8)[truth] * 5
    return clusters


def test_flipped_labels_are_found_and_ranked_first() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 600)
    flipped = rng.choice(600, 12, replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + 1) % 3
    images = audited(given, confident_model(truth, 1), clustered_features(truth, 2))
    suspects = find_suspects(images)
    assert list(suspects.columns) == SUSPECT_COLUMNS
    labels = suspects[suspects["issue"].str.contains("label")]
    rows = [int(name.split("/")[1][:4]) for name in labels["file"]]
    assert set(rows) == set(flipped.tolist())
    assert labels["suggested"].tolist() == [images.classes[truth[i]] for i in rows]
    assert labels["score"].is_monotonic_decreasing
    assert (labels["score"] > 0.85).all()  # 1 - the probability of the given label
    assert suspects.index[suspects["issue"].str.contains("label")].max() < len(labels)  # first


def test_clean_labels_leave_the_list_short() -> None:
    truth = np.random.default_rng(3).integers(0, 3, 600)
    suspects = find_suspects(
        audited(truth, confident_model(truth, 4), clustered_features(truth, 5))
    )
    assert not suspects["issue"].str.contains("label").any()
    assert len(suspects) <= 0.05 * 600  # the tail of a normal cloud, at most


def test_an_image_far_from_everything_is_an_outlier() -> None:
    truth = np.random.default_rng(6).integers(0, 3, 600)
    features = clustered_features(truth, 7)
    features[[10, 20]] = [[40.0] * 8, [-40.0] * 8]
    suspects = find_suspects(audited(truth, confident_model(truth, 8), features))
    outliers = suspects[suspects["issue"] == "outlier"]
    assert {outliers["file"].iloc[0], outliers["file"].iloc[1]} == {
        f"{truth[10]}/0010.png",
        f"{truth[20]}/0020.png",
    }
    assert (outliers["score"].iloc[:2] >= 0.99).all()  # farther than 99% of the images


def test_counts_per_split_kind_and_class() -> None:
    suspects = pd.DataFrame(
        [
            ["a/1.png", "train", "a", "b", "label", 0.9],
            ["b/2.png", "train", "b", "b", "outlier", 0.99],
            ["c/3.png", "test", "c", "a", "label+outlier", 0.8],
        ],
        columns=SUSPECT_COLUMNS,
    )
    counts = count_suspects(suspects, ["train", "val", "test"], ["a", "b", "c"])
    assert counts["train"] == {
        "label": {"a": 1, "b": 0, "c": 0},
        "outlier": {"a": 0, "b": 1, "c": 0},
    }
    assert counts["val"]["label"] == {"a": 0, "b": 0, "c": 0}
    assert counts["test"]["label"]["c"] == counts["test"]["outlier"]["c"] == 1
