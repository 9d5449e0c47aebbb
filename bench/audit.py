"""``python -m bench audit``: the audit stage's work once the frozen features are cached (the
``pretrained`` path): K-fold logistic regressions for out-of-sample probabilities, then
cleanlab's Datalab for label issues and outliers, on 20,000 synthetic feature vectors with 2%
of the labels flipped. The baseline, timed in the same rounds: the bare K-fold fits, the least
any out-of-sample audit must do; the ratio is what finding the suspects adds on top."""

from __future__ import annotations

import argparse
import time
from functools import partial
from typing import Any

import numpy as np

from bench.common import Clock, Commands, add_output_argument, emit, log

NAME = "audit"


def add_parser(benches: Commands) -> None:
    """Register the command on ``benches`` (an ``add_subparsers`` result)."""
    sub = benches.add_parser(
        NAME,
        help="the audit on cached features (20k images): K-fold fits plus cleanlab, over the "
        "bare K-fold fits",
    )
    sub.add_argument("--images", type=int, default=20_000, help="images audited (all splits)")
    sub.add_argument("--dims", type=int, default=1280, help="feature size (EfficientNet-Lite0)")
    sub.add_argument("--classes", type=int, default=10, help="classes")
    sub.add_argument("--folds", type=int, default=5, help="audit.folds")
    sub.add_argument("--flipped", type=float, default=0.02, help="share of labels flipped")
    sub.add_argument("--rounds", type=int, default=3, help="rounds of each timing; median")
    add_output_argument(sub)
    sub.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    emit(
        bench_audit(
            args.images,
            dims=args.dims,
            classes=args.classes,
            folds=args.folds,
            flipped=args.flipped,
            rounds=args.rounds,
        ),
        args.output,
    )


def bench_audit(
    images: int,
    *,
    dims: int,
    classes: int,
    folds: int,
    flipped: float,
    rounds: int = 3,
    clock: Clock = time.perf_counter,
) -> dict[str, Any]:
    """Median seconds of the whole audit on cached features and of the bare K-fold fits,
    alternating within each round (a slow spell of a shared machine hits both alike); the
    recall and precision of the flipped labels among the label suspects."""
    from imgpipe.audit.folds import assign_folds
    from imgpipe.audit.out_of_sample import features_out_of_sample

    features, _, given, flips = synthetic_features(images, dims, classes, flipped)
    pool = images - images // 5  # train+val: 80%, as the default split
    fold = assign_folds(given[:pool], None, folds, seed=0)
    fits = partial(
        features_out_of_sample,
        features[:pool],
        given[:pool],
        features[pool:],
        fold=fold,
        classes=classes,
        seed=0,
    )
    bare, whole, suspects = [], [], None
    for _ in range(rounds):
        started = clock()
        fits()
        bare.append(clock() - started)
        started = clock()
        suspects = audit_once(fits, given, classes)
        whole.append(clock() - started)
    assert suspects is not None
    labelled = {int(i) for i in suspects}
    found = len(labelled & set(flips.tolist()))
    results = {
        "images": images,
        "dims": dims,
        "classes": classes,
        "folds": folds,
        "rounds": rounds,
        "audit_seconds": round(float(np.median(whole)), 2),
        "kfold_fits_seconds": round(float(np.median(bare)), 2),
        "audit_over_fits_per_round": [round(w / b, 2) for w, b in zip(whole, bare, strict=True)],
        "audit_over_fits": round(
            float(np.median([w / b for w, b in zip(whole, bare, strict=True)])), 2
        ),
        "flipped": len(flips),
        "label_suspects": len(labelled),
        "recall": round(found / max(len(flips), 1), 3),
        "precision": round(found / max(len(labelled), 1), 3),
    }
    log.info("%s", results)
    return results


def audit_once(fits: partial[Any], given: np.ndarray, classes: int) -> np.ndarray:
    """The audit's work on cached features: the fits, then Datalab; the rows suspected of a
    wrong label."""
    from imgpipe.audit.suspects import AuditedImages, find_suspects

    scores = fits()
    table = find_suspects(
        AuditedImages(
            files=[str(i) for i in range(len(given))],
            splits=["train"] * len(given),
            labels=given,
            probabilities=np.concatenate([scores.pool, scores.test]),
            features=scores.features,
            classes=[str(c) for c in range(classes)],
        )
    )
    rows: np.ndarray = table[table["issue"].str.contains("label")]["file"].astype(int).to_numpy()
    return rows


def synthetic_features(
    images: int, dims: int, classes: int, flipped: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features of a backbone that separates the classes well but not perfectly (class means
    plus noise), the true labels, the given ones (``flipped`` of them changed) and the rows
    flipped."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, images)
    means = rng.normal(0, 1, (classes, dims)).astype(np.float32)
    features = means[truth] * 0.25 + rng.normal(0, 1, (images, dims)).astype(np.float32)
    flips = rng.choice(images, round(flipped * images), replace=False)
    given = truth.copy()
    given[flips] = (truth[flips] + rng.integers(1, classes, len(flips))) % classes
    return features, truth, given, flips
