import numpy as np
import pytest

from imgpipe.evaluation.groups import group_scores


def test_each_group_is_scored_once_from_its_mean_probabilities() -> None:
    labels = np.array([1, 1, 1, 0, 0, 1, 0])
    groups = ["p2", "p2", "p2", "p1", "p3", "p3", "p4"]
    probabilities = np.array(
        [[0.2, 0.8], [0.6, 0.4], [0.4, 0.6], [0.9, 0.1], [0.5, 0.5], [0.5, 0.5], [0.3, 0.7]]
    )
    scored = group_scores(labels, probabilities, groups)
    assert scored.names == ["p2", "p1", "p4"]  # first appearance; p3 spans two classes
    assert scored.spanning_classes == 1
    np.testing.assert_array_equal(scored.labels, [1, 0, 0])
    np.testing.assert_allclose(scored.probabilities, [[0.4, 0.6], [0.9, 0.1], [0.3, 0.7]])


def test_group_metrics_count_patients_not_images() -> None:
    from imgpipe.evaluation.bootstrap import OperatingPoint
    from imgpipe.evaluation.metrics import group_metrics

    rng = np.random.default_rng(0)
    # 60 patients of 1-8 images each; a patient's images are all right or all wrong.
    groups, labels, rows = [], [], []
    for patient in range(60):
        label, right = patient % 2, patient % 5 != 0
        for _ in range(rng.integers(1, 9)):
            groups.append(f"p{patient}")
            labels.append(label)
            p = 0.8 if right else 0.3
            rows.append([1 - p, p] if label == 1 else [p, 1 - p])
    metrics = group_metrics(
        np.array(labels),
        np.array(rows),
        ["no", "yes"],
        groups,
        point=OperatingPoint(1, 0.5),
        resamples=1000,
    )
    assert metrics["test_groups"] == metrics["group_scored"] == 60
    assert metrics["groups_spanning_classes"] == 0
    assert metrics["group_accuracy"] == pytest.approx(48 / 60)
    assert metrics["group_sensitivity"] == pytest.approx(24 / 30)
    assert metrics["group_accuracy_ci_low"] < 0.8 < metrics["group_accuracy_ci_high"]
    assert {"group_macro_f1", "group_macro_roc_auc", "group_specificity_ci_high"} <= set(metrics)
    assert "group_ece" not in metrics and "group_test_images" not in metrics
