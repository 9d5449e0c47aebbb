"""``imgpipe drift``: compare what a model sees now against the drift-baseline reference.

Per-feature drift (image statistics, predicted class, confidence) comes from Evidently's
``DataDriftPreset`` with its tests; drift of the embeddings from Evidently's classifier method,
called directly (its embedding report renders a t-SNE plot that takes ~25 s per 1k rows).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imgpipe.data.images import ImageDecodeError, decode_image
from imgpipe.data.layout import files_below
from imgpipe.errors import ImgpipeError
from imgpipe.io import atomic_path, write_json
from imgpipe.monitoring.features import STATISTIC_COLUMNS, feature_table
from imgpipe.runtime.onnx_model import OnnxClassifier
from imgpipe.runtime.tables import TABLE_FORMATS, TABLE_SUFFIXES

log = logging.getLogger(__name__)

FEATURE_COLUMNS = [*STATISTIC_COLUMNS, "confidence"]
CATEGORY_COLUMNS = ["predicted"]


@dataclass(frozen=True)
class DriftResult:
    drifted: bool
    summary: dict[str, Any]


def current_features(source: Path, classifier: OnnxClassifier) -> pd.DataFrame:
    """Feature rows for ``source``: a folder of images (decoded the way preprocess does) or a
    table (.parquet, .csv, .jsonl) with the columns the drift baseline has."""
    if source.is_dir():
        return _features_of_folder(source, classifier)
    suffix = source.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise ImgpipeError(
            f"--current {source}: expected a folder of images or a {', '.join(TABLE_SUFFIXES)} file"
        )
    _, read = TABLE_FORMATS[suffix]
    try:
        return read(source)
    except FileNotFoundError:
        raise ImgpipeError(f"--current {source}: file not found") from None


def _features_of_folder(folder: Path, classifier: OnnxClassifier) -> pd.DataFrame:
    decoded, skipped = [], 0
    for path in files_below(folder):
        try:
            decoded.append(decode_image(path, classifier.image_size, classifier.channels))
        except ImageDecodeError as reason:
            log.warning("skipping %s: %s", path, reason)
            skipped += 1
    if not decoded:
        raise ImgpipeError(f"--current {folder}: no decodable images found")
    log.info("%d images decoded from %s (%d skipped)", len(decoded), folder, skipped)
    return feature_table(classifier, np.stack(decoded))


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    drift_share: float,
    embedding_threshold: float,
    html: Path | None = None,
) -> DriftResult:
    """Run the drift checks; drift is detected when at least ``drift_share`` of the per-image
    features drift or the embedding classifier's ROC AUC exceeds ``embedding_threshold``."""
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model as classifier

    embedding_columns = [c for c in reference.columns if c.startswith("emb_")]
    missing = sorted(set(FEATURE_COLUMNS + CATEGORY_COLUMNS + embedding_columns) - set(current))
    if missing:
        raise ImgpipeError(f"current data lacks the baseline's columns: {', '.join(missing[:8])}")
    share, features = _feature_drift(reference, current, drift_share, html)
    score, embedding_drift, _ = classifier(threshold=embedding_threshold)(
        current[embedding_columns], reference[embedding_columns]
    )
    feature_drift = bool(share >= drift_share)
    summary: dict[str, Any] = {
        "drift_detected": feature_drift or bool(embedding_drift),
        "rows": {"reference": len(reference), "current": len(current)},
        "features": {
            "drifted_share": round(float(share), 6),
            "drift_share": drift_share,
            "drift_detected": feature_drift,
            "columns": features,
        },
        "embedding": {
            "method": "classifier ROC AUC",
            "score": round(float(score), 6),
            "threshold": embedding_threshold,
            "drift_detected": bool(embedding_drift),
        },
    }
    return DriftResult(summary["drift_detected"], summary)


def _feature_drift(
    reference: pd.DataFrame, current: pd.DataFrame, drift_share: float, html: Path | None
) -> tuple[float, dict[str, dict[str, Any]]]:
    """Evidently's ``DataDriftPreset`` over the per-image features (its HTML report written to
    ``html``): the share of features that drifted, and each feature's score and verdict."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.core.metric_types import CountValue, SingleValue
    from evidently.legacy.tests.base_test import TestStatus
    from evidently.presets import DataDriftPreset

    columns = FEATURE_COLUMNS + CATEGORY_COLUMNS
    definition = DataDefinition(
        numerical_columns=FEATURE_COLUMNS, categorical_columns=CATEGORY_COLUMNS
    )
    report = Report([DataDriftPreset(drift_share=drift_share)], include_tests=True)
    snapshot = report.run(
        Dataset.from_pandas(current[columns], data_definition=definition),
        Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    if html is not None:
        with atomic_path(html) as temporary:
            snapshot.save_html(str(temporary))
    results = list(snapshot.metric_results.values())
    # The preset's DriftedColumnsCount is its one count-and-share result.
    share = next(r.share.value for r in results if isinstance(r, CountValue))
    # The score is a p-value or a distance depending on the method Evidently picked for the
    # column and sample size; its own test says whether that column drifted.
    features = {}
    for result in results:
        config = result.metric_value_location.metric.params
        if isinstance(result, SingleValue) and config["type"].endswith("ValueDrift"):
            features[config["column"]] = {
                "score": round(float(result.value), 6),
                "method": config["method"],
                "threshold": config["threshold"],
                "drift_detected": any(t.status == TestStatus.FAIL for t in result.tests),
            }
    return float(share), features


def run_drift(
    current: Path,
    reference: Path,
    model: Path,
    out: Path,
    *,
    drift_share: float,
    embedding_threshold: float,
) -> DriftResult:
    """Everything ``imgpipe drift`` does: features, checks, ``report.html`` and ``drift.json``."""
    if not reference.is_file():
        raise ImgpipeError(f"--reference {reference}: not found (run `dvc repro drift-baseline`)")
    table = pd.read_parquet(reference)
    current_table = current_features(current, OnnxClassifier(model))
    result = compare(
        table,
        current_table,
        drift_share=drift_share,
        embedding_threshold=embedding_threshold,
        html=out / "report.html",
    )
    write_json(out / "drift.json", result.summary)
    return result
