import itertools

import numpy as np
import torch

from imgpipe.data.splits import SplitArrays
from imgpipe.evaluation.metrics import (
    classification_metrics,
    confusion_rows,
    misclassified_rows,
    score_split,
    tta_headline,
    tta_views,
)


def test_metrics_on_a_known_confusion() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1])
    metrics, per_class = classification_metrics(labels, np.eye(3)[predicted], ["a", "b", "c"])
    assert metrics["accuracy"] == round(4 / 6, 6)
    assert "top5_accuracy" not in metrics  # three classes: top-5 would always be 1
    assert per_class[0] == {
        "class": "a",
        "precision": 1.0,
        "recall": round(2 / 3, 6),
        "f1": 0.8,
        "support": 3,
    }
    assert per_class[2]["f1"] == 0.0
    assert metrics["macro_f1"] == round((0.8 + 2 * 0.5 * 1.0 / 1.5 + 0) / 3, 6)
    assert confusion_rows(labels[:2], predicted[2:4], ["a", "b", "c"]) == [
        {"actual": "a", "predicted": "b"},
        {"actual": "a", "predicted": "b"},
    ]


def test_top5_accuracy_counts_the_true_class_among_the_five_best() -> None:
    classes = [str(i) for i in range(8)]
    probabilities = np.tile(np.linspace(0.2, 0.05, 8), (4, 1))  # class 0 best ... 7 worst
    labels = np.array([0, 4, 5, 7])  # ranks 1, 5, 6, 8
    metrics, _ = classification_metrics(labels, probabilities, classes)
    assert metrics["top5_accuracy"] == 0.5 and metrics["accuracy"] == 0.25


def test_test_time_augmentation_views() -> None:
    images = torch.arange(2 * 1 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    assert len(tta_views("none")) == 1
    original, mirrored = (view(images) for view in tta_views("hflip"))
    assert torch.equal(original, images) and torch.equal(mirrored, images.flip(-1))
    crops = [view(images) for view in tta_views("multicrop")]
    assert len(crops) == 6 and all(c.shape == images.shape for c in crops)
    assert crops[1][0, 0, 0, 0] == images[0, 0, 0, 0]  # top-left crop keeps the corner
    assert crops[4][0, 0, -1, -1] == images[0, 0, -1, -1]  # bottom-right likewise
    assert len({bytes(c.numpy()) for c in crops}) == 6


def test_misclassified_most_confident_first() -> None:
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    rows = misclassified_rows(np.array([0, 0, 0]), probabilities, ["x", "y"], ["f0", "f1", "f2"])
    assert [(r["file"], r["predicted"], r["confidence"]) for r in rows] == [
        ("f2", "y", 0.8),
        ("f1", "y", 0.6),
    ]


def test_expected_calibration_error_by_hand() -> None:
    from imgpipe.evaluation.calibration import calibration

    # Two bins used: confidence 0.95 (2 images, 1 right) and 0.6 (2 images, both right).
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    ece, rows = calibration(labels, probabilities, bins=10)
    assert ece == round(0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.6), 6)
    assert rows == [
        {"confidence": 0.6, "accuracy": 1.0, "images": 2},
        {"confidence": 0.95, "accuracy": 0.5, "images": 2},
    ]
    perfect = np.eye(3)[[0, 1, 2]]
    assert calibration(np.array([0, 1, 2]), perfect)[0] == 0.0


def test_one_vs_rest_curves_separate_and_overlap() -> None:
    from imgpipe.evaluation.metrics import one_vs_rest_curves

    labels = np.array([0, 0, 1, 1, 2, 2])
    # Class 0 is ranked perfectly; class 1 and 2 are swapped on one image each.
    probabilities = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.8, 0.1, 0.1],
            [0.1, 0.6, 0.3],
            [0.1, 0.3, 0.6],
            [0.1, 0.3, 0.6],
            [0.1, 0.6, 0.3],
        ]
    )
    scores, roc, pr = one_vs_rest_curves(labels, probabilities, ["a", "b", "c"])
    assert scores["a"] == {"roc_auc": 1.0, "average_precision": 1.0}
    assert scores["b"]["roc_auc"] < 1.0 and scores["c"]["roc_auc"] < 1.0
    assert {row["class"] for row in roc} == {"a", "b", "c"}
    assert [row["recall"] for row in pr if row["class"] == "a"] == [i / 100 for i in range(101)]
    for name in ("a", "b", "c"):  # interpolated precision never rises with recall
        curve = [row["precision"] for row in pr if row["class"] == name]
        assert all(x >= y for x, y in itertools.pairwise(curve))


def three_classes(labels: list[int]) -> SplitArrays:
    images = np.zeros((len(labels), 4, 4, 1), np.uint8)
    files = [f"{i}.png" for i in range(len(labels))]
    return SplitArrays(images, np.array(labels), ["a", "b", "c"], files)


def test_score_split_adds_calibration_and_separability_to_the_metrics() -> None:
    split = three_classes([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.8, 0.1, 0.1],
            [0.1, 0.6, 0.3],
            [0.1, 0.3, 0.6],
            [0.1, 0.3, 0.6],
            [0.1, 0.6, 0.3],
        ]
    )
    metrics, per_class = score_split(split.labels, probabilities, split.classes)
    headline, rows = classification_metrics(split.labels, probabilities, split.classes)
    assert {k: metrics[k] for k in headline} == headline
    # 15 bins: 0.9 and 0.8 alone and right, 0.6 four times and half right.
    assert metrics["ece"] == round((0.1 + 0.2 + 4 * 0.1) / 6, 6)
    roc_auc = [row["roc_auc"] for row in per_class]
    assert roc_auc[0] == 1.0 and roc_auc[1] == roc_auc[2] == 0.75
    assert metrics["macro_roc_auc"] == round(2.5 / 3, 6)
    assert per_class[0] == rows[0] | {"roc_auc": 1.0, "average_precision": 1.0}
    assert metrics["macro_average_precision"] == round(
        sum(row["average_precision"] for row in per_class) / 3, 6
    )


def test_score_split_averages_over_the_classes_present_only() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    split = three_classes([0, 1, 1])
    metrics, per_class = score_split(split.labels, probabilities, split.classes)
    assert "roc_auc" not in per_class[2]  # no image of class c: its AUC is undefined
    assert metrics["macro_roc_auc"] == round((1.0 + 1.0) / 2, 6)
    split = three_classes([1, 1, 1])
    metrics, per_class = score_split(split.labels, probabilities, split.classes)
    assert metrics["macro_roc_auc"] is None and metrics["macro_average_precision"] is None


def test_tta_headline_names_the_augmented_scores() -> None:
    split = three_classes([0, 1, 2, 2])
    augmented = np.eye(3)[[0, 1, 2, 0]]
    assert tta_headline(split, augmented) == {
        "tta_accuracy": 0.75,
        "tta_macro_f1": round((2 / 3 + 1 + 2 / 3) / 3, 6),
    }
