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
