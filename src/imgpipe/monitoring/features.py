"""Per-image features for drift monitoring, computed with the exported ONNX model.

The ``drift-baseline`` stage computes them for a sample of the training data; the service and
``imgpipe drift`` compute the same columns for live traffic, so the two tables compare directly.
Built on :mod:`imgpipe.runtime.onnx_model` (no torch).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

from imgpipe.runtime.onnx_model import OnnxClassifier, embedding_column_names

if TYPE_CHECKING:
    import pandas as pd

STATISTIC_COLUMNS = ("brightness", "contrast", "sharpness", "dark_fraction", "bright_fraction")
# The low quantiles of the top-1 probability the service exports beside its live histogram:
# a model growing unsure shows first in its least confident images.
CONFIDENCE_QUANTILES = (0.05, 0.1, 0.25, 0.5)
STATISTICS_CHUNK = 16  # images per pass of image_statistics
PROGRESS_CHUNK = 256  # images per step of a progress bar: whole batches of OnnxClassifier.run


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Simple per-image statistics of ``N x H x W x C`` uint8 images, in [0, 1] units.

    brightness: mean pixel value; contrast: pixel standard deviation; sharpness: mean absolute
    Laplacian (drops when images blur); dark/bright fraction: share of pixels below 10% / above
    90% (moves with exposure and inversion).
    """
    # A chunk at a time: each image's figures are its own, and float copies of a few thousand
    # photos at once (1.2 GB for 2,000 at 224 px) made this 3x slower than chunks that stay
    # in the CPU's cache.
    chunks = [
        _statistics(images[start : start + STATISTICS_CHUNK])
        for start in range(0, len(images), STATISTICS_CHUNK)
    ] or [_statistics(images)]
    return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}


def _statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    grey = images.astype(np.float32).mean(axis=-1) / 255.0
    laplacian = (
        4 * grey[:, 1:-1, 1:-1]
        - grey[:, :-2, 1:-1]
        - grey[:, 2:, 1:-1]
        - grey[:, 1:-1, :-2]
        - grey[:, 1:-1, 2:]
    )
    return {
        "brightness": grey.mean(axis=(1, 2)),
        "contrast": grey.std(axis=(1, 2)),
        "sharpness": np.abs(laplacian).mean(axis=(1, 2)),
        "dark_fraction": (grey < 0.1).mean(axis=(1, 2)),
        "bright_fraction": (grey > 0.9).mean(axis=(1, 2)),
    }


def feature_table(
    classifier: OnnxClassifier,
    images: np.ndarray,
    progress: str | None = None,
    outputs: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per image: statistics, predicted class, confidence and ``emb_*`` columns.

    Args:
        classifier: the model, run on ``images`` unless ``outputs`` are given.
        images: ``N x H x W x C`` uint8.
        progress: names a progress bar over the images (none by default).
        outputs: the model's softmax probabilities and embeddings of ``images``, already
            computed (:func:`imgpipe.runtime.cached_outputs.cached_outputs`).
    """
    import pandas as pd  # here, not above: the service uses this module and not pandas

    probabilities, embeddings = outputs or _model_outputs(classifier, images, progress)
    table = pd.DataFrame(image_statistics(images))
    table["predicted"] = [classifier.classes[i] for i in probabilities.argmax(axis=1)]
    table["confidence"] = probabilities.max(axis=1)
    embedding_columns = pd.DataFrame(
        embeddings, columns=embedding_column_names(embeddings.shape[1])
    )
    return pd.concat([table, embedding_columns], axis=1)


def _model_outputs(
    classifier: OnnxClassifier, images: np.ndarray, progress: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """``classifier.run`` on ``images``, a chunk of whole batches at a time when ``progress``
    names a bar (the same batches, so the same outputs)."""
    if progress is None:
        return classifier.run(images)
    from tqdm import tqdm

    outputs = []
    with tqdm(total=len(images), desc=progress, unit="img") as bar:
        for start in range(0, len(images), PROGRESS_CHUNK):
            outputs.append(classifier.run(images[start : start + PROGRESS_CHUNK]))
            bar.update(len(outputs[-1][0]))
    if not outputs:
        return classifier.run(images)
    probabilities, embeddings = zip(*outputs, strict=True)
    return np.concatenate(probabilities), np.concatenate(embeddings)


def baseline_summary(table: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """Small JSON-able summary of a feature table, for ``metrics/``; ``imgpipe serve
    --baseline`` exports its confidence and class mix for the alerts to compare against."""
    counts = table["predicted"].value_counts()
    return {
        "rows": len(table),
        "embedding_dims": sum(1 for c in table.columns if c.startswith("emb_")),
        "mean_confidence": round(float(table["confidence"].mean()), 6),
        "confidence_quantiles": {
            str(q): round(float(table["confidence"].quantile(q)), 6) for q in CONFIDENCE_QUANTILES
        },
        "predicted_share": {c: round(float(counts.get(c, 0)) / len(table), 6) for c in classes},
        "statistics": {
            column: {
                "mean": round(float(table[column].mean()), 6),
                "std": round(float(table[column].std()), 6),
            }
            for column in STATISTIC_COLUMNS
        },
    }


def sample_rows(lengths: list[int], size: int, seed: int) -> list[np.ndarray]:
    """Up to ``size`` rows drawn without replacement from parts of ``lengths`` rows, in a
    seeded order: each part's chosen rows, ascending."""
    total = sum(lengths)
    chosen = np.sort(np.random.default_rng(seed).permutation(total)[: min(size, total)])
    offsets = np.cumsum([0, *lengths])
    return [chosen[(chosen >= lo) & (chosen < hi)] - lo for lo, hi in itertools.pairwise(offsets)]


def take_rows(parts: list[np.ndarray], rows: list[np.ndarray]) -> np.ndarray:
    """``parts[i][rows[i]]`` for every part, one after the other."""
    return np.concatenate([part[picked] for part, picked in zip(parts, rows, strict=True)])
