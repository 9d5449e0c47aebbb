"""Out-of-sample probabilities: no image is scored by a model that saw its label, the same for a
seed; pixels find the images that are not like the others."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from imgpipe.audit.folds import assign_folds
from imgpipe.audit.out_of_sample import (
    features_out_of_sample,
    frozen_features,
    network_out_of_sample,
    pixel_features,
)
from imgpipe.audit.suspects import AuditedImages, find_suspects
from imgpipe.data.splits import SplitArrays
from imgpipe.params import load_params
from imgpipe.training.loop import train_classifier
from imgpipe.training.settings import TrainConfig
from tests.conftest import REPO_ROOT, make_split, train_config

CPU = torch.device("cpu")


def audit_config() -> TrainConfig:
    """The audit's own training settings (params.yaml's audit section, shrunk to seconds)."""
    params = load_params(REPO_ROOT / "params.yaml")
    tiny = params.replace(**train_config().model_dump())
    return tiny.replace(audit={"epochs": 2, "batch_size": 8, "folds": 3}).audit_training()


def relabelled(split: SplitArrays, row: int) -> SplitArrays:
    labels = split.labels.copy()
    labels[row] = 1 - labels[row]
    return SplitArrays(split.images, labels, split.classes, split.files)


def test_changing_an_images_label_leaves_its_own_probabilities_bit_identical(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its label trains only the other folds' models, never the one that scores it; the
    test split's labels train nothing at all."""
    pool, test = make_split(15, size=16, seed=1), make_split(5, size=16, seed=2)
    fold = assign_folds(pool.labels, None, folds=3, seed=0)
    config = audit_config()
    with caplog.at_level(logging.INFO):
        before = network_out_of_sample(pool, test, fold, config, CPU)
    # One line per fold; the epochs' "val" lines (training rows here) stay out.
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(":")[0] for line in lines] == [f"audit fold {k}/3" for k in (1, 2, 3)]
    assert logging.getLogger("imgpipe.training.loop").level == logging.NOTSET  # restored
    after = network_out_of_sample(relabelled(pool, 4), relabelled(test, 0), fold, config, CPU)
    assert np.array_equal(before.pool[4], after.pool[4])
    others = fold != fold[4]  # scored by models the changed label trained
    assert not np.array_equal(before.pool[others], after.pool[others])
    same_fold = (fold == fold[4]) & (np.arange(len(pool)) != 4)
    assert np.array_equal(before.pool[same_fold], after.pool[same_fold])
    assert not np.array_equal(before.test, after.test)  # the pool label reaches the test
    again = network_out_of_sample(pool, test, fold, config, CPU)  # deterministic for a seed
    assert np.array_equal(before.pool, again.pool) and np.array_equal(before.test, again.test)


def test_the_features_path_is_out_of_sample_too() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 90)
    features = rng.normal(0, 1, (90, 6)) + np.eye(3, 6)[labels] * 3
    test_features = rng.normal(0, 1, (12, 6))
    fold = assign_folds(labels, None, folds=3, seed=0)
    before = features_out_of_sample(features, labels, test_features, fold=fold, classes=3, seed=0)
    changed = labels.copy()
    changed[7] = (labels[7] + 1) % 3
    after = features_out_of_sample(features, changed, test_features, fold=fold, classes=3, seed=0)
    assert np.array_equal(before.pool[7], after.pool[7])
    assert not np.array_equal(before.pool[fold != fold[7]], after.pool[fold != fold[7]])
    assert np.allclose(before.pool.sum(1), 1) and np.allclose(before.test.sum(1), 1)
    assert (before.pool.argmax(1) == labels).mean() > 0.9


def test_noise_among_the_images_is_flagged_in_pixel_space() -> None:
    split = make_split(100, size=32, seed=3)
    images = np.array(split.images)
    rng = np.random.default_rng(4)
    planted = [7, 150]
    images[planted] = rng.integers(0, 256, images[planted].shape, dtype=np.uint8)
    labels = split.labels
    probabilities = np.eye(2)[labels] * 0.9 + 0.05
    suspects = find_suspects(
        AuditedImages(
            files=split.files,
            splits=["train"] * len(labels),
            labels=labels,
            probabilities=probabilities,
            features=pixel_features(images),
            classes=split.classes,
        )
    )
    outliers = suspects[suspects["issue"] == "outlier"]["file"].tolist()
    assert set(outliers[:2]) == {split.files[i] for i in planted}


def test_pixel_features_shrink_large_images() -> None:
    images = np.zeros((3, 224, 224, 3), dtype=np.uint8)
    images[1] = 255
    features = pixel_features(images)
    assert features.shape == (3, 32 * 32 * 3)
    assert np.allclose(features.mean(axis=0), 0, atol=1e-6)


@pytest.mark.parametrize("finetune", ["lp-ft", "full"])
def test_the_audit_fills_the_feature_entry_lp_ft_reads(
    finetune: str, weights: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Unless finetune is head, the audit computes one unaugmented view (however many
    feature_views say), the very entry lp-ft's linear probe then reads."""
    config = train_config(pretrained=weights, finetune=finetune, feature_views=3, epochs=2)
    train, val, test = make_split(6, seed=1), make_split(3, seed=2), make_split(3, seed=3)
    cache = tmp_path / "features"
    train_val, _ = frozen_features(config, train, val, test, device=CPU, cache=cache)
    assert len(train_val) == len(train) + len(val)
    written = sorted(cache.glob("*.npz"))
    # train, val and test, each one unaugmented view: no augmented views entry
    assert [path.name.split("-")[0] for path in written] == ["split"] * 3
    with caplog.at_level(logging.INFO):
        train_classifier(train, val, config.replace(finetune="lp-ft"), feature_cache=cache)
    assert sorted(cache.glob("*.npz")) == written
    assert any("frozen features of train from" in r.getMessage() for r in caplog.records)
