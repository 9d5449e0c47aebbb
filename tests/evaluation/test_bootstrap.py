"""Bootstrap intervals: the point estimates are the evaluate stage's, the intervals cover what
they claim, groups and pairing are honoured, and the verdicts read right."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from imgpipe.evaluation import bootstrap
from imgpipe.evaluation.bootstrap import (
    HEADLINE_METRICS,
    OPERATING_METRICS,
    OperatingPoint,
    PairedDelta,
    confidence_intervals,
    paired_deltas,
    resample_weights,
    weighted_metrics,
)
from imgpipe.evaluation.calibration import calibration


def noisy_predictions(
    rng: np.random.Generator, labels: np.ndarray, classes: int, accuracy: float
) -> np.ndarray:
    """Probabilities whose argmax is the label for a share ``accuracy`` of the images (another
    class otherwise), with a confidence that varies across images."""
    right = rng.random(len(labels)) < accuracy
    wrong_class = (labels + rng.integers(1, classes, len(labels))) % classes
    predicted = np.where(right, labels, wrong_class)
    probabilities = rng.random((len(labels), classes)) * 0.5
    probabilities[np.arange(len(labels)), predicted] = 0.6 + 0.4 * rng.random(len(labels))
    probabilities /= probabilities.sum(1, keepdims=True)
    return probabilities


def scikit_learn_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """The evaluate stage's headline metrics as it computes them."""
    classes = probabilities.shape[1]
    predicted = probabilities.argmax(1)
    aucs = [
        roc_auc_score(labels == c, probabilities[:, c])
        for c in range(classes)
        if 0 < (labels == c).sum() < len(labels)
    ]
    return {
        "accuracy": accuracy_score(labels, predicted),
        "macro_f1": f1_score(
            labels, predicted, labels=range(classes), average="macro", zero_division=0
        ),
        "macro_roc_auc": float(np.mean(aucs)),
        "ece": calibration(labels, probabilities)[0],
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_estimates_and_weighted_rows_equal_scikit_learns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes, size = 5, 300
    labels = rng.integers(0, classes - 1, size)
    probabilities = noisy_predictions(rng, labels, classes - 1, 0.7)
    # Scores on a coarse grid: many ties within a class's scores, across classes and labels,
    # and confidences on the calibration bins' edges (multiples of 1/15).
    probabilities = np.round(probabilities * 30) / 30
    # A class no image has and none is predicted: F1 0/0 counts as 0, and it has no AUC.
    probabilities = np.hstack([probabilities, np.zeros((size, 1))])
    full = weighted_metrics(labels, probabilities, np.ones((1, size)))
    # A resample counts image i weights[i] times: the same as the repeated images unweighted.
    weights = rng.integers(0, 4, (3, size))
    resampled = weighted_metrics(labels, probabilities, weights)
    for name, expected in scikit_learn_scores(labels, probabilities).items():
        assert full[name].shape == (1,)
        # The stage's ECE is rounded to 6 decimals; the rest are exact up to float sums.
        assert full[name][0] == pytest.approx(expected, abs=1e-6 if name == "ece" else 1e-12)
    for row, counts in enumerate(weights):
        repeated = np.repeat(np.arange(size), counts)
        again = scikit_learn_scores(labels[repeated], probabilities[repeated])
        for name, expected in again.items():
            tolerance = 1e-6 if name == "ece" else 1e-12
            assert resampled[name][row] == pytest.approx(expected, abs=tolerance), name


def test_operating_point_metrics_count_at_or_above_the_threshold_as_positive() -> None:
    labels = np.array([1, 1, 1, 0, 0, 2, 2, 0])
    positive_score = np.array([0.9, 0.5, 0.2, 0.5, 0.1, 0.7, 0.3, 0.4])  # 0.5: at the threshold
    probabilities = np.stack([1 - positive_score, positive_score, np.zeros(8)], 1)
    point = OperatingPoint(positive=1, threshold=0.5)
    # Class 1 against the rest: TP 2 (0.9, 0.5), FN 1, FP 2 (0.5, 0.7), TN 3.
    weights = np.array([np.ones(8), [0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0]])
    metrics = weighted_metrics(labels, probabilities, weights, point)
    assert set(metrics) == {*HEADLINE_METRICS, *OPERATING_METRICS}
    assert metrics["sensitivity"][0] == pytest.approx(2 / 3)
    assert metrics["specificity"][0] == pytest.approx(3 / 5)
    assert metrics["ppv"][0] == pytest.approx(2 / 4)
    assert metrics["npv"][0] == pytest.approx(3 / 4)
    # No positive image in the second row, no negative in the third: undefined, not 0.
    assert np.isnan(metrics["sensitivity"][1]) and metrics["ppv"][1] == 0  # 2 false alarms
    assert np.isnan(metrics["specificity"][2]) and metrics["npv"][2] == 0  # 1 miss
    intervals = confidence_intervals(labels, probabilities, point=point, resamples=50)
    assert set(intervals) == {*HEADLINE_METRICS, *OPERATING_METRICS}
    assert set(confidence_intervals(labels, probabilities, resamples=50)) == set(HEADLINE_METRICS)


def test_the_accuracy_interval_covers_the_true_accuracy_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    repeats, covered = 200, 0
    for repeat in range(repeats):
        labels = rng.integers(0, 2, 400)
        probabilities = noisy_predictions(rng, labels, 2, accuracy=0.9)
        low, high = confidence_intervals(labels, probabilities, resamples=200, seed=repeat)[
            "accuracy"
        ]
        covered += low <= 0.9 <= high
    assert 0.90 <= covered / repeats <= 0.99


def test_a_calibrated_models_ece_interval_contains_its_ece() -> None:
    # Labels drawn from the probabilities themselves: calibrated, ECE only sampling noise.
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (1000, 10))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (probabilities.cumsum(1) < rng.random((1000, 1))).sum(1)
    ece = weighted_metrics(labels, probabilities, np.ones((1, 1000)))["ece"][0]
    [resampled] = bootstrap._resampled_metrics(labels, [(probabilities, None)], None, 1000, 0)
    assert np.percentile(resampled["ece"], 2.5) > ece  # the plain percentile interval misses it
    low, high = confidence_intervals(labels, probabilities)["ece"]
    assert 0 <= low < ece < high


def test_groups_are_drawn_whole_and_widen_the_interval_when_their_images_agree() -> None:
    rng = np.random.default_rng(3)
    groups = [f"patient{i // 8}" for i in range(800)]  # 100 groups of 8 images
    weights = resample_weights(800, groups, resamples=300)
    assert weights.shape == (300, 800) and weights.dtype.kind == "i"
    by_group = weights.reshape(300, 100, 8)
    assert (by_group == by_group[:, :, :1]).all()  # every image of a group counts alike
    assert (by_group[:, :, 0].sum(1) == 100).all()  # 100 draws of groups per resample
    # Whole groups right or wrong: 100 independent outcomes, not 800.
    labels = rng.integers(0, 3, 800)
    right = np.repeat(rng.random(100) < 0.85, 8)
    probabilities = np.full((800, 3), 0.1)
    probabilities[np.arange(800), np.where(right, labels, (labels + 1) % 3)] = 0.8
    grouped = confidence_intervals(labels, probabilities, groups, resamples=300)["accuracy"]
    ignored = confidence_intervals(labels, probabilities, resamples=300)["accuracy"]
    assert grouped[1] - grouped[0] > 2 * (ignored[1] - ignored[0])  # about sqrt(8) = 2.8


def test_a_clearly_worse_head_is_worse_and_a_chance_difference_is_within_noise() -> None:
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, 1000)
    base = noisy_predictions(rng, labels, 4, accuracy=0.9)
    # An independent model just as good: differs from the base on ~18% of the images.
    alike = paired_deltas(labels, base, noisy_predictions(rng, labels, 4, accuracy=0.9))
    assert set(alike) == set(HEADLINE_METRICS)
    for name in ("accuracy", "macro_f1", "macro_roc_auc"):
        assert alike[name].verdict().startswith("within noise (±"), (name, alike[name])
    accuracy = alike["accuracy"]
    noise = max(abs(accuracy.low - accuracy.delta), abs(accuracy.high - accuracy.delta))
    shown = float(accuracy.verdict().removeprefix("within noise (±").removesuffix(")"))
    assert shown == pytest.approx(noise, rel=0.05) and noise > 0.01
    # The base with 15 of its right answers turned wrong: 1.5 points, which separate intervals
    # of 1000 images (about ±1.9 points each) could not tell from chance, but pairing can.
    head = base.copy()
    flipped = np.flatnonzero(base.argmax(1) == labels)[:15]
    head[flipped] = np.roll(head[flipped], 1, axis=1)
    worse = paired_deltas(labels, base, head)
    assert worse["accuracy"].delta == -0.015
    assert worse["accuracy"].verdict() == "worse" and worse["macro_f1"].verdict() == "worse"
    assert -0.025 < worse["accuracy"].low < worse["accuracy"].high < 0


def test_operating_point_deltas_need_both_points_and_ece_is_better_lower() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 600)
    base = noisy_predictions(rng, labels, 2, accuracy=0.9)
    # The same argmax with confidences near 1/2 for a model right 90% of the time.
    underconfident = base**0.1 / (base**0.1).sum(1, keepdims=True)
    point = OperatingPoint(positive=1, threshold=0.5)
    deltas = paired_deltas(labels, base, underconfident, None, point, point)
    assert set(deltas) == {*HEADLINE_METRICS, *OPERATING_METRICS}
    assert deltas["accuracy"] == PairedDelta(0.0, 0.0, 0.0)
    assert deltas["ece"].low > 0  # further from calibrated
    assert deltas["ece"].verdict(lower_is_better=True) == "worse"
    assert deltas["ece"].verdict() == "better"  # the same numbers read the other way
    assert set(paired_deltas(labels, base, underconfident, None, point, None)) == set(
        HEADLINE_METRICS
    )


def test_verdict_words_and_noise_digits() -> None:
    assert PairedDelta(0.01, 0.002, 0.02).verdict() == "better"
    assert PairedDelta(0.01, 0.002, 0.02).verdict(lower_is_better=True) == "worse"
    assert PairedDelta(-0.01, -0.02, -0.001).verdict() == "worse"
    assert PairedDelta(-0.001, -0.0071, 0.0051).verdict() == "within noise (±0.0061)"
    assert PairedDelta(0.01, 0.0, 0.02).verdict() == "within noise (±0.010)"  # 0 is inside
    assert PairedDelta(0.5, -0.9, 1.0).verdict() == "within noise (±1.4)"


def test_the_same_seed_gives_the_same_intervals() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 200)
    probabilities = noisy_predictions(rng, labels, 3, accuracy=0.8)
    groups = [str(i % 40) for i in range(200)]
    first = confidence_intervals(labels, probabilities, groups, resamples=100, seed=4)
    assert first == confidence_intervals(labels, probabilities, groups, resamples=100, seed=4)
    assert first != confidence_intervals(labels, probabilities, groups, resamples=100, seed=5)
    assert all(low <= high for low, high in first.values())


def test_blocks_of_resamples_give_what_one_matrix_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resamples are scored a block at a time (memory); the blocks must be the same draws."""
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 3, 200)
    base, head = (noisy_predictions(rng, labels, 3, accuracy=0.8) for _ in range(2))
    groups = [str(i % 50) for i in range(200)]
    point = OperatingPoint(positive=2, threshold=0.3)
    whole = confidence_intervals(labels, base, groups, point, resamples=100)
    paired = paired_deltas(labels, base, head, groups, point, point, resamples=100)
    monkeypatch.setattr(bootstrap, "BLOCK_WEIGHTS", 7 * 200)  # 15 blocks, the last of 2
    assert confidence_intervals(labels, base, groups, point, resamples=100) == whole
    assert paired_deltas(labels, base, head, groups, point, point, resamples=100) == paired
    weights = resample_weights(200, groups, resamples=100)
    assert all(  # resample_weights' rows are the ones scored
        (block == weights[start : start + 7]).all()
        for start, block in zip(
            range(0, 100, 7), bootstrap._weight_blocks(200, groups, 100, 0, block=7), strict=True
        )
    )


def test_the_module_imports_without_torch() -> None:
    """The PR report imports it in CI's report job, which has no reason to load torch."""
    code = "import sys, imgpipe.evaluation.bootstrap; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "False", result.stderr
