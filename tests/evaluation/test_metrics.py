import itertools

import numpy as np
import torch

from imgpipe.evaluation.metrics import (
    classification_metrics,
    confusion_rows,
    misclassified_rows,
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
    from imgpipe.evaluation.metrics import calibration

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


def test_misclassified_grid_shows_the_worst_first() -> None:
    from imgpipe.evaluation.metrics import misclassified_grid

    images = np.stack([np.full((8, 8, 1), 40 * i, np.uint8) for i in range(5)])
    labels = np.array([0, 0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.1, 0.9], [0.2, 0.8], [0.6, 0.4]])
    sheet = misclassified_grid(images, labels, probabilities, ["x", "y"], tile=20)
    assert sheet.size == (6 * 20, 20 + 14)  # three wrong images: one row of six slots
    # Most confidently wrong first: image 2 (0.9), then image 1 (0.7); image 4 (0.6) too.
    assert sheet.getpixel((10, 10)) == (80, 80, 80)
    assert sheet.getpixel((30, 10)) == (40, 40, 40)
    assert sheet.getpixel((50, 10)) == (160, 160, 160)


def test_gradcam_grid_shows_where_the_wrong_images_were_looked_at() -> None:
    from imgpipe.evaluation.metrics import gradcam_grid
    from imgpipe.training.inference import predict_split
    from imgpipe.training.loop import train_classifier
    from tests.conftest import make_split, train_config

    model = train_classifier(make_split(24, seed=1), make_split(8, seed=2), train_config()).model
    split = make_split(3, seed=5)
    probabilities = predict_split(model, split, 8, torch.device("cpu")).numpy()
    told = 1 - probabilities.argmax(1)  # labels that make every prediction a mistake
    sheet = gradcam_grid(model, split.images, told, probabilities, split.classes, tile=40)
    assert sheet.size == (6 * 40, 40 + 14)
    tiles = [np.asarray(sheet.crop((x * 40 + 2, 2, x * 40 + 38, 38))) for x in range(6)]
    # Over a grey image, red minus blue is the heat map's alone: it must vary within a tile.
    heat = [t[..., 0].astype(int) - t[..., 2].astype(int) for t in tiles]
    assert all(h.std() > 1 for h in heat)
    assert not all(np.array_equal(heat[0], h) for h in heat[1:])
