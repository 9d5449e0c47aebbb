"""``python -m bench bootstrap``: the evaluate stage's bootstrap intervals (all resamples at once,
as matrix products) at 1,000 and 10,000 test images, with and without groups, against a plain
loop calling scikit-learn once per resample."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from bench.common import Clock, Commands, add_output_argument, emit, log

NAME = "bootstrap"


def add_parser(benches: Commands) -> None:
    """Register the command on ``benches`` (an ``add_subparsers`` result)."""
    sub = benches.add_parser(
        NAME,
        help="bootstrap confidence intervals at 1k and 10k test images, grouped and not, over "
        "a loop calling scikit-learn per resample",
    )
    sub.add_argument(
        "--images", type=int, nargs="+", default=[1000, 10_000], help="test split sizes"
    )
    sub.add_argument("--classes", type=int, default=10, help="classes of the synthetic model")
    sub.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    sub.add_argument("--group-size", type=int, default=5, help="images per group, grouped runs")
    sub.add_argument("--loop-images", type=int, default=1000, help="test images, sklearn loop")
    sub.add_argument("--rounds", type=int, default=3, help="rounds of each timing; median")
    add_output_argument(sub)
    sub.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    results = bench_bootstrap(
        args.images,
        classes=args.classes,
        resamples=args.resamples,
        group_size=args.group_size,
        loop_images=args.loop_images,
        rounds=args.rounds,
    )
    emit(results, args.output)


def bench_bootstrap(
    sizes: list[int],
    *,
    classes: int,
    resamples: int,
    group_size: int,
    loop_images: int,
    rounds: int = 3,
    clock: Clock = time.perf_counter,
) -> dict[str, Any]:
    """Seconds of :func:`~imgpipe.evaluation.bootstrap.confidence_intervals` per test split
    size, resampling images and whole groups of ``group_size``, and its speed-up over a loop
    computing accuracy, macro F1 and macro ROC AUC with scikit-learn once per resample (at
    ``loop_images``; the interval of each from the same percentiles).

    The loop and the vectorised intervals alternate within each round, so a shared machine's
    slow spell hits both sides of a round alike; the speed-up is the median of the rounds'.
    """
    from imgpipe.evaluation.bootstrap import confidence_intervals

    rng = np.random.default_rng(0)
    timings: dict[str, dict[str, float]] = {}
    for size in sizes:
        labels, probabilities = synthetic_predictions(rng, size, classes)
        groups = [str(index // group_size) for index in range(size)]
        intervals = partial(confidence_intervals, labels, probabilities, resamples=resamples)
        timings[str(size)] = {
            "ungrouped": _median_seconds(intervals, rounds, clock),
            "grouped": _median_seconds(partial(intervals, groups), rounds, clock),
        }
    labels, probabilities = synthetic_predictions(rng, loop_images, classes)
    baseline = partial(sklearn_loop, labels, probabilities, resamples)
    intervals = partial(confidence_intervals, labels, probabilities, resamples=resamples)
    loop, vectorised = [], []
    for _ in range(rounds):
        loop.append(_seconds(baseline, clock))
        vectorised.append(_seconds(intervals, clock))
    speedups = [slow / fast for slow, fast in zip(loop, vectorised, strict=True)]
    results = {
        "classes": classes,
        "resamples": resamples,
        "group_size": group_size,
        "rounds": rounds,
        "confidence_intervals_seconds": timings,
        "loop_images": loop_images,
        "sklearn_loop_seconds": round(float(np.median(loop)), 3),
        "vectorised_seconds": round(float(np.median(vectorised)), 3),
        "speedup_per_round": [round(s, 1) for s in speedups],
        "speedup": round(float(np.median(speedups)), 1),
    }
    log.info("%s", results)
    return results


def synthetic_predictions(
    rng: np.random.Generator, size: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random labels and probabilities of a fair model (the true class usually ranked first),
    rounded to 6 decimals as predictions.csv holds them."""
    labels = rng.integers(0, classes, size)
    logits = rng.normal(size=(size, classes))
    logits[np.arange(size), labels] += 2.0
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(1, keepdims=True)
    return labels, np.round(probabilities, 6)


def sklearn_loop(
    labels: np.ndarray, probabilities: np.ndarray, resamples: int, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """The baseline: for each resample, the images drawn with replacement and scikit-learn's
    accuracy, macro F1 and one-vs-rest ROC AUC (averaged over the classes present) on them;
    then the 95% percentile interval of each."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(seed)
    classes = range(probabilities.shape[1])
    scores: dict[str, list[float]] = {"accuracy": [], "macro_f1": [], "macro_roc_auc": []}
    for _ in range(resamples):
        drawn = rng.integers(0, len(labels), len(labels))
        truth, scored = labels[drawn], probabilities[drawn]
        predicted = scored.argmax(1)
        scores["accuracy"].append(accuracy_score(truth, predicted))
        scores["macro_f1"].append(
            f1_score(truth, predicted, labels=classes, average="macro", zero_division=0)
        )
        aucs = [
            roc_auc_score(truth == c, scored[:, c])
            for c in classes
            if 0 < (truth == c).sum() < len(truth)
        ]
        scores["macro_roc_auc"].append(float(np.mean(aucs)) if aucs else np.nan)
    return {
        name: (float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5)))
        for name, values in scores.items()
    }


def _seconds(action: Callable[[], Any], clock: Clock) -> float:
    started = clock()
    action()
    return clock() - started


def _median_seconds(action: Callable[[], Any], rounds: int, clock: Clock) -> float:
    return round(float(np.median([_seconds(action, clock) for _ in range(rounds)])), 3)
