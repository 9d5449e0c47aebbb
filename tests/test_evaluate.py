import itertools

import numpy as np

from imgpipe.evaluate import classification_metrics, confusion_rows, misclassified_rows


def test_metrics_on_a_known_confusion() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1])
    metrics = classification_metrics(labels, predicted, ["a", "b", "c"])
    assert metrics["accuracy"] == round(4 / 6, 6)
    assert metrics["per_class"]["a"] == {
        "precision": 1.0,
        "recall": round(2 / 3, 6),
        "f1": 0.8,
        "support": 3,
    }
    assert metrics["per_class"]["c"]["f1"] == 0.0
    assert metrics["macro_f1"] == round((0.8 + 2 * 0.5 * 1.0 / 1.5 + 0) / 3, 6)
    assert confusion_rows(labels[:2], predicted[2:4], ["a", "b", "c"]) == [
        {"actual": "a", "predicted": "b"},
        {"actual": "a", "predicted": "b"},
    ]


def test_misclassified_most_confident_first() -> None:
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    rows = misclassified_rows(np.array([0, 0, 0]), probabilities, ["x", "y"], ["f0", "f1", "f2"])
    assert [(r["file"], r["predicted"], r["confidence"]) for r in rows] == [
        ("f2", "y", 0.8),
        ("f1", "y", 0.6),
    ]


def test_expected_calibration_error_by_hand() -> None:
    from imgpipe.evaluate import calibration

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
    from imgpipe.evaluate import one_vs_rest_curves

    labels = np.array([0, 0, 1, 1, 2, 2])
    # Class 0 is ranked perfectly; class 1 and 2 are swapped on one image each.
    probabilities = np.array(
        [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.6, 0.3], [0.1, 0.3, 0.6],
         [0.1, 0.3, 0.6], [0.1, 0.6, 0.3]]
    )  # fmt: skip
    scores, roc, pr = one_vs_rest_curves(labels, probabilities, ["a", "b", "c"])
    assert scores["a"] == {"roc_auc": 1.0, "average_precision": 1.0}
    assert scores["b"]["roc_auc"] < 1.0 and scores["c"]["roc_auc"] < 1.0
    assert {row["class"] for row in roc} == {"a", "b", "c"}
    assert [row["recall"] for row in pr if row["class"] == "a"] == [i / 100 for i in range(101)]
    for name in ("a", "b", "c"):  # interpolated precision never rises with recall
        curve = [row["precision"] for row in pr if row["class"] == name]
        assert all(x >= y for x, y in itertools.pairwise(curve))


def test_misclassified_grid_shows_the_worst_first() -> None:
    from imgpipe.evaluate import misclassified_grid

    images = np.stack([np.full((8, 8, 1), 40 * i, np.uint8) for i in range(5)])
    labels = np.array([0, 0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.1, 0.9], [0.2, 0.8], [0.6, 0.4]])
    sheet = misclassified_grid(images, labels, probabilities, ["x", "y"], tile=20)
    assert sheet.size == (6 * 20, 20 + 14)  # three wrong images: one row of six slots
    # Most confidently wrong first: image 2 (0.9), then image 1 (0.7); image 4 (0.6) too.
    assert sheet.getpixel((10, 10)) == (80, 80, 80)
    assert sheet.getpixel((30, 10)) == (40, 40, 40)
    assert sheet.getpixel((50, 10)) == (160, 160, 160)
