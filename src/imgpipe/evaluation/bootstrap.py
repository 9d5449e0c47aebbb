"""How sure the evaluate stage's scores are: percentile-bootstrap intervals of the headline and
operating-point metrics (ECE's corrected for the bias resampling adds), and paired intervals of
the difference between two models scored on the same test images (what the PR report judges a
change by, instead of a fixed threshold).

Every resample is a row of integer weights over the test images (how often each was drawn), so
each metric is a few matrix products over all resamples at once: no Python loop over resamples
(only over blocks of a few hundred of them, to bound memory).
With groups (several images of one patient, scene or clip), whole groups are drawn, since their
images are right or wrong together and counting them as independent understates the noise.

Numpy only, and no torch: the PR report imports this module in CI's report job.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from imgpipe.errors import ImgpipeError


@dataclass(frozen=True)
class OperatingPoint:
    """A binary decision on top of the classifier: an image is called positive when
    ``probabilities[:, positive] >= threshold``."""

    positive: int
    threshold: float


HEADLINE_METRICS = ("accuracy", "macro_f1", "macro_roc_auc", "ece")
OPERATING_METRICS = ("sensitivity", "specificity", "ppv", "npv")
LOWER_IS_BETTER = frozenset({"ece"})
# Metrics whose resamples run above the full sample's value: their intervals are shifted back
# by the resamples' mean excess (bias-corrected percentile intervals).
BIASED_UPWARD = frozenset({"ece"})
RESAMPLES = 1000
CALIBRATION_BINS = 15  # as the evaluate stage's ECE (imgpipe.evaluation.calibration)
# Resamples are scored in blocks of about this many (resample, image) weights: ~32 MB per
# float64 temporary, so that evaluate.bootstrap_resamples (up to 100,000) fits in memory.
BLOCK_WEIGHTS = 4_000_000


def resample_weights(
    size: int, groups: Sequence[str] | None = None, *, resamples: int = RESAMPLES, seed: int = 0
) -> np.ndarray:
    """(resamples, size) integer multiplicities of each image in each resample; with groups (one
    group id per image), whole groups are drawn with replacement (as many draws as there are
    groups) and every image of a drawn group counts once per draw."""
    return np.concatenate(list(_weight_blocks(size, groups, resamples, seed, block=resamples)))


def _weight_blocks(
    size: int, groups: Sequence[str] | None, resamples: int, seed: int, *, block: int
) -> Iterator[np.ndarray]:
    """:func:`resample_weights`' rows, ``block`` resamples at a time: the same rows whatever
    the block (one generator draws them in order)."""
    if resamples < 1:
        raise ImgpipeError(f"bootstrap: {resamples} resamples; at least 1 is needed")
    rng = np.random.default_rng(seed)
    group_of_image = None
    if groups is not None:
        if len(groups) != size:
            raise ImgpipeError(f"bootstrap: {len(groups)} group ids for {size} images")
        _, group_of_image = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        group_of_image = group_of_image.ravel()
    draws = size if group_of_image is None else int(group_of_image.max(initial=-1)) + 1
    for start in range(0, resamples, block):
        counts = _draw_counts(rng, draws, min(block, resamples - start))
        # np.take keeps rows contiguous, unlike counts[:, group_of_image] (see _roc_auc).
        yield counts if group_of_image is None else np.take(counts, group_of_image, axis=1)


def _draw_counts(rng: np.random.Generator, size: int, resamples: int) -> np.ndarray:
    """How often each of ``size`` items is drawn in ``size`` draws with replacement, per row:
    one bincount over all rows (each row's indices offset into its own range)."""
    drawn = rng.integers(0, size, (resamples, size)) if size else np.zeros((resamples, 0), int)
    offsets = np.arange(resamples)[:, None] * size
    counts = np.bincount((drawn + offsets).ravel(), minlength=resamples * size)
    return counts.reshape(resamples, size)


def _resampled_metrics(
    labels: np.ndarray,
    models: Sequence[tuple[np.ndarray, OperatingPoint | None]],
    groups: Sequence[str] | None,
    resamples: int,
    seed: int,
) -> list[dict[str, np.ndarray]]:
    """:func:`weighted_metrics` of each (probabilities, point) over the same resamples, scored
    a block of resamples at a time to bound memory."""
    block = max(1, BLOCK_WEIGHTS // max(1, len(labels)))
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in models]
    for weights in _weight_blocks(len(labels), groups, resamples, seed, block=block):
        for scored, (probabilities, point) in zip(parts, models, strict=True):
            scored.append(weighted_metrics(labels, probabilities, weights, point))
    return [
        {name: np.concatenate([p[name] for p in scored]) for name in scored[0]} for scored in parts
    ]


def weighted_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    weights: np.ndarray,
    point: OperatingPoint | None = None,
) -> dict[str, np.ndarray]:
    """Every metric of HEADLINE_METRICS (and OPERATING_METRICS when point is given) for every
    row of weights: arrays of shape (len(weights),), nan where undefined in that resample.

    With ``weights = np.ones((1, N))`` each equals the evaluate stage's point estimate
    (scikit-learn's accuracy, macro F1 with zero_division=0 and one-vs-rest ROC AUC averaged
    over the classes with positives and negatives; the ECE of imgpipe.evaluation.calibration).
    """
    labels = np.asarray(labels).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    weights = np.ascontiguousarray(np.atleast_2d(weights), dtype=np.float64)  # see _roc_auc
    if probabilities.ndim != 2 or not len(labels) == len(probabilities) == weights.shape[1]:
        raise ImgpipeError(
            f"bootstrap: {len(labels)} labels, probabilities of shape {probabilities.shape} "
            f"and weights of shape {weights.shape} do not match"
        )
    predicted = probabilities.argmax(1)
    total = weights.sum(1)
    metrics = {
        "accuracy": _ratio(weights @ (predicted == labels).astype(np.float64), total),
        "macro_f1": _macro_f1(labels, predicted, probabilities.shape[1], weights),
        "macro_roc_auc": _macro_roc_auc(labels, probabilities, weights),
        "ece": _expected_calibration_error(labels, probabilities, weights, total),
    }
    if point is not None:
        metrics.update(_operating_metrics(labels, probabilities, weights, point))
    return metrics


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, nan where the denominator is 0 (the metric is undefined)."""
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _one_hot(indices: np.ndarray, width: int) -> np.ndarray:
    return np.asarray(indices[:, None] == np.arange(width), dtype=np.float64)


def _macro_f1(
    labels: np.ndarray, predicted: np.ndarray, classes: int, weights: np.ndarray
) -> np.ndarray:
    """Per-class F1 = 2TP / (2TP + FP + FN), 0 where that is 0/0 (scikit-learn's
    zero_division=0), averaged over all classes."""
    actual, called = _one_hot(labels, classes), _one_hot(predicted, classes)
    true_positives = weights @ (actual * called)
    both = weights @ actual + weights @ called  # 2TP + FP + FN
    f1 = np.zeros_like(both)
    np.divide(2 * true_positives, both, out=f1, where=both > 0)
    return f1.mean(1)  # type: ignore[no-any-return]


def _macro_roc_auc(
    labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """One-vs-rest ROC AUC averaged over the classes with both positives and negatives in each
    resample; nan where no class has both."""
    total = np.zeros(len(weights))
    defined = np.zeros(len(weights))
    for index in range(probabilities.shape[1]):
        positive = labels == index
        if positive.all() or not positive.any():
            continue  # undefined in every resample
        auc = _roc_auc(probabilities[:, index], positive, weights)
        valid = ~np.isnan(auc)
        total[valid] += auc[valid]
        defined += valid
    return _ratio(total, defined)


def _roc_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted ROC AUC of ``scores`` for every row of ``weights``, ties counting 1/2 (the
    Mann-Whitney form of roc_auc_score): each positive scores the weight of the negatives below
    it plus half of those tied with it, from cumulative sums of the negatives' weights.

    Columns are gathered with np.take, which keeps rows contiguous: ``weights[:, order]`` gives
    a Fortran-ordered copy that made the gather and the cumulative sum several times slower."""
    order = np.argsort(scores, kind="stable")
    ranked, is_positive = scores[order], positive[order]
    # The tie block [start, end) of every positive, as counts of the negatives before it.
    negatives_before = np.concatenate(([0], np.cumsum(~is_positive)))
    start = negatives_before[np.searchsorted(ranked, ranked[is_positive], side="left")]
    end = negatives_before[np.searchsorted(ranked, ranked[is_positive], side="right")]
    negative_weights = np.take(weights, order[~is_positive], axis=1)
    cumulative = np.zeros((len(weights), negative_weights.shape[1] + 1))
    np.cumsum(negative_weights, axis=1, out=cumulative[:, 1:])
    below = np.take(cumulative, start, axis=1)
    half_tied = (np.take(cumulative, end, axis=1) - below) / 2
    positive_weights = np.take(weights, order[is_positive], axis=1)
    wins = np.einsum("rp,rp->r", positive_weights, below + half_tied)
    return _ratio(wins, positive_weights.sum(1) * cumulative[:, -1])


def _expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray, total: np.ndarray
) -> np.ndarray:
    """ECE of the top-1 confidence in 15 equal-width bins, as evaluation.calibration: sum over
    bins of (weight share) x |accuracy - mean confidence| = sum |weighted sum of (correct -
    confidence) in the bin| / total weight."""
    confidence = probabilities.max(1)
    correct = (probabilities.argmax(1) == labels).astype(np.float64)
    bins = CALIBRATION_BINS
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    gap_per_bin = weights @ (_one_hot(index, bins) * (correct - confidence)[:, None])
    return _ratio(np.abs(gap_per_bin).sum(1), total)


def _operating_metrics(
    labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray, point: OperatingPoint
) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV and NPV of calling ``point.positive`` (one against the
    rest) at ``point.threshold``; nan where a denominator is 0."""
    if not 0 <= point.positive < probabilities.shape[1]:
        raise ImgpipeError(
            f"bootstrap: positive class {point.positive} of {probabilities.shape[1]} classes"
        )
    called = probabilities[:, point.positive] >= point.threshold
    actual = labels == point.positive
    cells = np.stack([called & actual, called & ~actual, ~called & actual, ~called & ~actual], 1)
    tp, fp, fn, tn = (weights @ cells.astype(np.float64)).T
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }


def _metric_names(point: OperatingPoint | None) -> tuple[str, ...]:
    return HEADLINE_METRICS + (OPERATING_METRICS if point is not None else ())


def _percentiles(level: float) -> tuple[float, float]:
    """The lower and upper percentiles of a central interval at ``level``."""
    if not 0 < level < 1:
        raise ImgpipeError(f"bootstrap: interval level {level} is not between 0 and 1")
    tail = (1 - level) / 2 * 100
    return tail, 100 - tail


def _interval(samples: np.ndarray, level: float) -> tuple[float, float] | None:
    """The percentile interval of the defined ``samples``; None when none is defined."""
    if np.isnan(samples).all():
        return None
    low, high = np.nanpercentile(samples, _percentiles(level))
    return round(float(low), 6), round(float(high), 6)


def confidence_intervals(
    labels: np.ndarray,
    probabilities: np.ndarray,
    groups: Sequence[str] | None = None,
    point: OperatingPoint | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval (low, high) per metric, rounded to 6 decimals; a metric
    undefined in the full sample is left out. ECE's resamples are first shifted by their mean
    excess over the full sample's ECE (see :data:`BIASED_UPWARD`), so its interval contains
    its figure."""
    full = weighted_metrics(labels, probabilities, np.ones((1, len(labels))), point)
    [resampled] = _resampled_metrics(labels, [(probabilities, point)], groups, resamples, seed)
    intervals = {}
    for name in _metric_names(point):
        samples = resampled[name]
        if name in BIASED_UPWARD and not np.isnan(samples).all():
            # A resample repeats images, which ECE reads as miscalibration: its resamples sit
            # above the full sample's ECE, and a well-calibrated model's percentile interval
            # could exclude its own figure. Shifted by that bias, they centre on it.
            samples = samples - (np.nanmean(samples) - full[name][0])
        interval = _interval(samples, level)
        if not np.isnan(full[name][0]) and interval is not None:
            if name in BIASED_UPWARD:  # an error rate: never below 0
                interval = (max(0.0, interval[0]), interval[1])
            intervals[name] = interval
    return intervals


@dataclass(frozen=True)
class PairedDelta:
    """Head minus base on the full sample, and the percentile interval of that difference over
    resamples drawing the same images for both models."""

    delta: float
    low: float
    high: float

    def verdict(self, lower_is_better: bool = False) -> str:
        """The word for the PR report: "better" or "worse" only when the interval excludes 0,
        else how far chance alone moves the difference ("within noise (±0.0061)")."""
        if self.low > 0 or self.high < 0:
            return "better" if (self.low > 0) != lower_is_better else "worse"
        noise = max(abs(self.low - self.delta), abs(self.high - self.delta))
        return f"within noise (±{_two_significant_digits(noise)})"


def _two_significant_digits(value: float) -> str:
    """``value`` with two significant digits and no exponent: 0.0061, 0.012, 1.5, 15."""
    rounded = float(f"{value:.2g}")
    if rounded == 0:
        return "0"
    decimals = max(0, 1 - int(np.floor(np.log10(rounded))))
    return f"{rounded:.{decimals}f}"


def paired_deltas(  # noqa: PLR0917 (the agreed call: labels, both sides, groups, points)
    labels: np.ndarray,
    base: np.ndarray,
    head: np.ndarray,
    groups: Sequence[str] | None = None,
    base_point: OperatingPoint | None = None,
    head_point: OperatingPoint | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, PairedDelta]:
    """Head minus base per metric, with the SAME resampled images for both sides (one weights
    matrix); operating-point metrics only when both points are given. Pairing cancels the
    noise both models share (which images happened to be in the test split), so a real change
    is told from chance with far fewer images than two separate intervals would need."""
    if base.shape != head.shape:
        raise ImgpipeError(f"bootstrap: base {base.shape} and head {head.shape} do not match")
    both = base_point is not None and head_point is not None
    base_point, head_point = (base_point, head_point) if both else (None, None)
    ones = np.ones((1, len(labels)))
    base_full = weighted_metrics(labels, base, ones, base_point)
    head_full = weighted_metrics(labels, head, ones, head_point)
    base_resampled, head_resampled = _resampled_metrics(
        labels, [(base, base_point), (head, head_point)], groups, resamples, seed
    )
    deltas = {}
    for name in _metric_names(base_point):
        delta = float(head_full[name][0] - base_full[name][0])
        interval = _interval(head_resampled[name] - base_resampled[name], level)
        if not np.isnan(delta) and interval is not None:
            deltas[name] = PairedDelta(round(delta, 6), *interval)
    return deltas
