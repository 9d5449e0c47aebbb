"""Out-of-sample class probabilities for the audit: every image is scored by models that never
saw its label.

The images of train and val are cut into folds (:mod:`imgpipe.audit.folds`); each fold is
scored by a model fitted on the others. Test images are scored by the mean of those fold
models: no test label trains anything, not even the audit's models, so the test split stays a
verdict nobody tuned on (and training images dropped by ``audit.exclude`` owe nothing to it).

Two kinds of model, measured on this project's figures (docs/audit.md):

* :func:`network_out_of_sample`: the configured timm network trained briefly from scratch on
  each fold (no pretrained weights: the digits default);
* :func:`features_out_of_sample`: a logistic regression on the frozen pretrained backbone's
  features (seconds, once the features are cached; what ``finetune: head`` trains on too).

Both also give the features the outlier search compares images in.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgpipe.audit.exclusions import subset
from imgpipe.data.splits import SplitArrays
from imgpipe.training.inference import predict_split
from imgpipe.training.loop import train_classifier
from imgpipe.training.model import Classifier
from imgpipe.training.settings import TrainConfig

log = logging.getLogger(__name__)

MONITOR_IMAGES = 256  # training rows train_classifier validates on: held-out labels choose nothing


@dataclass
class OutOfSample:
    pool: np.ndarray  # train+val rows x classes: each row from the model whose fold held it out
    test: np.ndarray  # test rows x classes: mean of the fold models
    features: np.ndarray  # (pool + test) rows x D: where outliers are looked for


def network_out_of_sample(
    pool: SplitArrays,
    test: SplitArrays,
    fold: np.ndarray,
    config: TrainConfig,
    device: torch.device,
) -> OutOfSample:
    """Train ``config``'s network on all folds but one, score the held-out fold and the test
    split, once per fold. ``features``: the images' pixels (:func:`pixel_features`): a network
    trained on an image memorises it, so its embeddings hide the very images that are odd
    (measured on the digits with 10 planted noise images: 4 of them among 236 flagged in the
    fold models' embeddings; in pixels, the planted ones are the most outlying)."""
    folds = int(fold.max()) + 1
    classes = len(pool.classes)
    pool_probabilities = np.zeros((len(pool), classes), dtype=np.float32)
    test_probabilities = np.zeros((len(test), classes), dtype=np.float32)
    for index in range(folds):
        trained_on = np.flatnonzero(fold != index)
        held_out = np.flatnonzero(fold == index)
        started = time.perf_counter()
        training = subset(pool, trained_on)
        monitor = subset(training, np.arange(min(MONITOR_IMAGES, len(training))))
        with _epochs_unlogged():  # their "val" is training rows: one line per fold instead
            model = train_classifier(training, monitor, config).model.to(device)
        pool_probabilities[held_out] = _probabilities(model, subset(pool, held_out), config, device)
        test_probabilities += _probabilities(model, test, config, device) / folds
        agreement = (pool_probabilities[held_out].argmax(1) == pool.labels[held_out]).mean()
        log.info(
            "audit fold %d/%d: %d epochs on %d images in %.0f s; the held-out %d agree with "
            "their labels %.3f",
            index + 1,
            folds,
            config.epochs,
            len(trained_on),
            time.perf_counter() - started,
            len(held_out),
            agreement,
        )
    features = pixel_features(np.concatenate([pool.images, test.images]))
    return OutOfSample(pool_probabilities, test_probabilities, features)


@contextlib.contextmanager
def _epochs_unlogged() -> Iterator[None]:
    loop = logging.getLogger("imgpipe.training.loop")
    level = loop.level
    loop.setLevel(logging.WARNING)
    try:
        yield
    finally:
        loop.setLevel(level)


def pixel_features(images: np.ndarray, side: int = 32) -> np.ndarray:
    """Each ``N x H x W x C`` uint8 image shrunk (area average) to at most ``side`` pixels a
    side, flattened, in [0, 1], minus the mean image: the outlier search's space when no
    pretrained backbone gives a better one (it finds blank, corrupt and off-topic images)."""
    out = []
    for start in range(0, len(images), 1024):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + 1024]))
        pixels = chunk.permute(0, 3, 1, 2).float() / 255.0
        if max(pixels.shape[-2:]) > side:
            pixels = torch.nn.functional.adaptive_avg_pool2d(pixels, side)
        out.append(pixels.flatten(1).numpy())
    flat = np.concatenate(out)
    centred: np.ndarray = (flat - flat.mean(axis=0)).astype(np.float32)
    return centred


def features_out_of_sample(
    pool_features: np.ndarray,
    pool_labels: np.ndarray,
    test_features: np.ndarray,
    *,
    fold: np.ndarray,
    classes: int,
    seed: int,
) -> OutOfSample:
    """A multinomial logistic regression (standardised features, L2, lbfgs: deterministic) per
    fold on the frozen backbone's features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(fold.max()) + 1
    pool_probabilities = np.zeros((len(pool_features), classes), dtype=np.float32)
    test_probabilities = np.zeros((len(test_features), classes), dtype=np.float32)
    for index in range(folds):
        trained_on, held_out = fold != index, fold == index
        model = make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)
        )
        model.fit(pool_features[trained_on], pool_labels[trained_on])
        seen = model.classes_  # a class absent from these folds gets probability 0
        pool_probabilities[np.ix_(held_out, seen)] = model.predict_proba(pool_features[held_out])
        test_probabilities[:, seen] += model.predict_proba(test_features) / folds
    features = _unit_rows(np.concatenate([pool_features, test_features]))
    return OutOfSample(pool_probabilities, test_probabilities, features)


def _probabilities(
    model: Classifier, split: SplitArrays, config: TrainConfig, device: torch.device
) -> np.ndarray:
    return np.asarray(predict_split(model, split, config.batch_size, device))


def _unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit: np.ndarray = (features / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def frozen_features(
    config: TrainConfig,
    train: SplitArrays,
    val: SplitArrays,
    test: SplitArrays,
    *,
    device: torch.device,
    cache: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """The pretrained backbone's features of train+val (rows in that order) and of test.

    Each split's features come from the cache ``finetune: head`` and ``lp-ft`` fill (keyed by
    the backbone's weights and the split's pixels, so whichever of audit, train, calibrate and
    evaluate runs first computes them and the others read them). Only ``head`` trains on
    augmented views: otherwise the one unaugmented view is all that is computed."""
    from imgpipe.training.augment import build_augmentation
    from imgpipe.training.distributed import Processes
    from imgpipe.training.feature_cache import FrozenBackbone, cached_features, split_features
    from imgpipe.training.loop import build_network

    if config.finetune != "head":
        config = config.replace(feature_views=1)
    backbone = FrozenBackbone(build_network(config, train, device)[0], device, cache)
    augment = build_augmentation(config.augment, train.images.shape[-1])
    views, val_features = cached_features(
        backbone,
        train,
        val,
        config,
        augment=augment,
        device=device,
        cache=cache,
        processes=Processes(),
    )
    test_features = split_features(backbone, test, cache, name="test")
    return np.concatenate([views[0], val_features]), test_features
