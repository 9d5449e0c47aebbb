"""The ``evaluate`` stage's scores: headline and per-class metrics of a trained model's
probabilities on the test split, calibration, one-vs-rest curves, and test-time augmentation.
The pictures of what went wrong are in :mod:`imgpipe.evaluation.pictures`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from imgpipe.data.splits import SplitArrays
from imgpipe.evaluation.bootstrap import (
    OPERATING_METRICS,
    OperatingPoint,
    confidence_intervals,
    weighted_metrics,
)
from imgpipe.evaluation.calibration import calibration
from imgpipe.evaluation.groups import group_scores

TOP_K_ACCURACY = 5  # top-k accuracy is reported when there are more classes than this
MULTICROP_SHARE = 0.875  # side of each of the five crops, as a share of the image's side
BOOTSTRAP_SEED = 0  # fixed: a rerun draws the same resamples, so eval.json stays bit-identical


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The headline metrics (accuracy, macro/weighted F1, top-5 accuracy when there are more
    than five classes) and one row per class (precision, recall, F1, support)."""
    predicted = probabilities.argmax(1)
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0
    )
    headline: dict[str, Any] = {
        "accuracy": round(float(accuracy_score(labels, predicted)), 6),
        "macro_f1": round(
            float(f1_score(labels, predicted, labels=indices, average="macro", zero_division=0)), 6
        ),
        "weighted_f1": round(
            float(f1_score(labels, predicted, labels=indices, average="weighted", zero_division=0)),
            6,
        ),
        "test_images": len(labels),
    }
    if len(classes) > TOP_K_ACCURACY:
        top = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K_ACCURACY]
        headline[f"top{TOP_K_ACCURACY}_accuracy"] = round(
            float((top == labels[:, None]).any(1).mean()), 6
        )
    rows = [
        {
            "class": name,
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]
    return headline, rows


def tta_views(
    kind: Literal["none", "hflip", "multicrop"],
) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """Test-time augmentation: the views of each image whose probabilities are averaged.

    ``hflip``: the image and its mirror image (wrong for digits and text). ``multicrop``: the
    image and its four corners and centre at 87.5% of the side, each resized back.
    """
    if kind == "none":
        return [_identity]
    if kind == "hflip":
        return [_identity, _mirror]
    return [_identity, *(_crop(corner) for corner in ("tl", "tr", "bl", "br", "centre"))]


def _identity(images: torch.Tensor) -> torch.Tensor:
    return images


def _mirror(images: torch.Tensor) -> torch.Tensor:
    return images.flip(-1)


def _crop(corner: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def view(images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        h, w = round(height * MULTICROP_SHARE), round(width * MULTICROP_SHARE)
        top = {"t": 0, "b": height - h, "c": (height - h) // 2}[corner[0]]
        left = {"l": 0, "r": width - w, "e": (width - w) // 2}[corner[1]]
        part = images[..., top : top + h, left : left + w].float()
        return F.interpolate(part, size=(height, width), mode="bilinear", align_corners=False)

    return view


def confusion_rows(
    labels: np.ndarray, predicted: np.ndarray, classes: list[str]
) -> list[dict[str, str]]:
    """One ``{actual, predicted}`` row per image: the input DVC's confusion template wants."""
    return [
        {"actual": classes[int(a)], "predicted": classes[int(p)]}
        for a, p in zip(labels, predicted, strict=True)
    ]


def misclassified_rows(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    files: list[str],
) -> list[dict[str, Any]]:
    """The wrongly classified test images, most confidently wrong first."""
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    rows = [
        {
            "file": files[i],
            "actual": classes[int(labels[i])],
            "predicted": classes[int(predicted[i])],
            "confidence": round(float(probabilities[i, predicted[i]]), 6),
        }
        for i in wrong
    ]
    return sorted(rows, key=lambda row: (-row["confidence"], row["file"]))


def one_vs_rest_curves(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Per class (that class against all others): ROC AUC and average precision, the ROC curve
    rows and the precision-recall curve rows, for DVC plots coloured by class.

    PR curves are given at the 101 recall points 0, 0.01, ..., 1 with interpolated precision
    (the best precision at that recall or above, as in COCO), which keeps the file small.
    """
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    scores: dict[str, dict[str, float]] = {}
    roc_rows: list[dict[str, Any]] = []
    pr_rows: list[dict[str, Any]] = []
    grid = np.linspace(0, 1, 101)
    for index, name in enumerate(classes):
        positive = labels == index
        if positive.all() or not positive.any():  # AUC undefined with one class present
            continue
        score = probabilities[:, index]
        scores[name] = {
            "roc_auc": round(float(roc_auc_score(positive, score)), 6),
            "average_precision": round(float(average_precision_score(positive, score)), 6),
        }
        fpr, tpr, _ = roc_curve(positive, score, drop_intermediate=True)
        roc_rows += [
            {"class": name, "fpr": round(float(f), 6), "tpr": round(float(t), 6)}
            for f, t in zip(fpr, tpr, strict=True)
        ]
        precision, recall, _ = precision_recall_curve(positive, score)
        best_from_here = np.maximum.accumulate(precision[::-1])[::-1]  # recall is decreasing
        at_grid = [float(best_from_here[recall >= r].max()) for r in grid]
        pr_rows += [
            {"class": name, "recall": round(float(r), 2), "precision": round(p, 6)}
            for r, p in zip(grid, at_grid, strict=True)
        ]
    return scores, roc_rows, pr_rows


def score_split(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The headline metrics (those of :func:`classification_metrics`, the expected calibration
    error, and ROC AUC and average precision averaged over the classes that have both positives
    and negatives; None when none has), and one row of scores per class (with its ROC AUC and
    average precision where defined)."""
    metrics, per_class = classification_metrics(labels, probabilities, classes)
    metrics["ece"], _ = calibration(labels, probabilities)
    separability, _, _ = one_vs_rest_curves(labels, probabilities, classes)
    for row in per_class:
        row.update(separability.get(row["class"], {}))
    for name in ("roc_auc", "average_precision"):
        values = [s[name] for s in separability.values()]
        metrics[f"macro_{name}"] = round(sum(values) / len(values), 6) if values else None
    return metrics, per_class


def operating_point_metrics(
    labels: np.ndarray, probabilities: np.ndarray, point: OperatingPoint
) -> dict[str, Any]:
    """The threshold and the sensitivity, specificity, PPV and NPV it gives (None where a
    denominator is empty)."""
    values = weighted_metrics(labels, probabilities, np.ones((1, len(labels))), point)
    scores = {name: values[name][0] for name in OPERATING_METRICS}
    return {"threshold": point.threshold} | {
        name: None if np.isnan(value) else round(float(value), 6) for name, value in scores.items()
    }


def with_intervals(
    metrics: dict[str, Any],
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    groups: list[str] | None,
    point: OperatingPoint | None,
    resamples: int,
) -> dict[str, Any]:
    """``metrics`` plus a 95% bootstrap interval beside each headline and operating-point
    metric (``<name>_ci_low``, ``<name>_ci_high``), whole groups resampled when there are
    groups."""
    intervals = confidence_intervals(
        labels, probabilities, groups, point, resamples=resamples, seed=BOOTSTRAP_SEED
    )
    out = dict(metrics)
    for name, (low, high) in intervals.items():
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    return out


GROUP_METRICS = ("accuracy", "macro_f1", "macro_roc_auc", *OPERATING_METRICS)


def group_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    groups: list[str],
    *,
    point: OperatingPoint | None,
    resamples: int,
) -> dict[str, Any]:
    """Patient/clip-level results (``group_`` keys): each group scored once from its mean
    probabilities, with intervals over groups, and how many groups there are, were scored and
    were left out for spanning classes."""
    scored = group_scores(labels, probabilities, groups)
    out: dict[str, Any] = {
        "test_groups": len(set(groups)),
        "group_scored": len(scored.labels),
        "groups_spanning_classes": scored.spanning_classes,
    }
    if not len(scored.labels):
        return out
    metrics, _ = score_split(scored.labels, scored.probabilities, classes)
    if point is not None:
        metrics |= operating_point_metrics(scored.labels, scored.probabilities, point)
    metrics = with_intervals(
        metrics, scored.labels, scored.probabilities, groups=None, point=point, resamples=resamples
    )
    kept = {
        key: value
        for key, value in metrics.items()
        if key.removesuffix("_ci_low").removesuffix("_ci_high") in GROUP_METRICS
    }
    return out | {f"group_{key}": value for key, value in kept.items()}


def tta_headline(split: SplitArrays, augmented: np.ndarray) -> dict[str, Any]:
    """Accuracy and macro F1 of the test-time-augmented probabilities, as ``tta_`` metrics."""
    tta, _ = classification_metrics(split.labels, augmented, split.classes)
    return {f"tta_{name}": tta[name] for name in ("accuracy", "macro_f1")}
