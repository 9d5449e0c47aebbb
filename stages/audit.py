"""Stage audit: list the images whose given label looks wrong, and the outliers, before anyone
trusts a score. Every train/val image is scored by a model that never saw its label (K-fold,
groups kept within a fold), every test image by all of those models; cleanlab's Datalab then
finds the label issues (confident learning) and the outliers (nearest-neighbour distances).
Writes the counts and the top suspects (--out), every suspect (--suspects), a picture sheet of
the top ones (--grid), and the training images ``audit.exclude`` drops (--exclusions)."""

import argparse
import logging
from pathlib import Path

import numpy as np

from imgpipe.audit.exclusions import training_exclusions, write_exclusions
from imgpipe.audit.folds import assign_folds
from imgpipe.audit.out_of_sample import (
    OutOfSample,
    features_out_of_sample,
    frozen_features,
    network_out_of_sample,
)
from imgpipe.audit.summary import audit_summary, suspect_sheet
from imgpipe.audit.suspects import AuditedImages, find_suspects
from imgpipe.data.splits import SPLITS, SplitArrays, load_split
from imgpipe.io import atomic_path, write_json
from imgpipe.params import Params, load_params
from imgpipe.stage import run_stage
from imgpipe.training.inference import resolve_device

log = logging.getLogger("imgpipe.stages.audit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder with train/, val/, test/")
    parser.add_argument(
        "--features", type=Path, required=True, help="frozen-feature cache (shared with train)"
    )
    parser.add_argument("--out", type=Path, required=True, help="audit JSON to write")
    parser.add_argument("--suspects", type=Path, required=True, help="suspects CSV to write")
    parser.add_argument("--grid", type=Path, required=True, help="PNG sheet of the top suspects")
    parser.add_argument(
        "--exclusions", type=Path, required=True, help="JSON list of training images to drop"
    )
    args = parser.parse_args()

    p = load_params()
    splits = {name: load_split(args.data / name) for name in SPLITS}
    fold = pool_folds(splits["train"], splits["val"], p.audit.folds, p.audit.seed)
    scores = out_of_sample_scores(p, splits, fold=fold, feature_cache=args.features)
    images = audited_images(splits, scores)
    suspects = find_suspects(images)
    excluded = training_exclusions(suspects, p.audit.exclude)
    summary = audit_summary(
        suspects, images, method=method_of(p), settings=p.audit, excluded=len(excluded)
    )
    log.warning(
        "audit: %d suspected label errors (train %d, val %d, test %d) and %d outliers; look at %s",
        summary["label_issues"],
        *(summary["suspects"][name]["label"] for name in SPLITS),
        summary["outliers"],
        args.suspects,
    )
    if excluded:
        log.warning("audit.exclude: train leaves out %d training images", len(excluded))
    args.suspects.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.suspects) as temporary:
        suspects.to_csv(temporary, index=False)
    with atomic_path(args.grid) as temporary:
        suspect_sheet(suspects, splits).save(temporary, format="PNG")
    write_exclusions(args.exclusions, excluded, p.audit.exclude)
    write_json(args.out, summary)


def pool_folds(train: SplitArrays, val: SplitArrays, folds: int, seed: int) -> np.ndarray:
    """The fold of every train+val row (in that order), a patient's images in one fold."""
    groups = (
        train.groups + val.groups if train.groups is not None and val.groups is not None else None
    )
    return assign_folds(np.concatenate([train.labels, val.labels]), groups, folds, seed)


def audited_images(splits: dict[str, SplitArrays], scores: OutOfSample) -> AuditedImages:
    """Every image of every split with its out-of-sample probabilities, train, val, test."""
    return AuditedImages(
        files=[file for split in splits.values() for file in split.files],
        splits=[name for name, split in splits.items() for _ in split.files],
        labels=np.concatenate([split.labels for split in splits.values()]),
        probabilities=np.concatenate([scores.pool, scores.test]),
        features=scores.features,
        classes=splits["train"].classes,
    )


def method_of(p: Params) -> str:
    """features: a linear model on the pretrained backbone's frozen features; network: the
    configured network trained from scratch on each fold."""
    return "features" if p.pretrained else "network"


def out_of_sample_scores(
    p: Params, splits: dict[str, SplitArrays], *, fold: np.ndarray, feature_cache: Path
) -> OutOfSample:
    """Each image's probabilities from models that never saw its label (see method_of)."""
    train, val, test = (splits[name] for name in SPLITS)
    device = resolve_device(p.device)
    if method_of(p) == "features":
        pool_features, test_features = frozen_features(
            p.training(), train, val, test, device=device, cache=feature_cache
        )
        pool_labels = np.concatenate([train.labels, val.labels])
        return features_out_of_sample(
            pool_features,
            pool_labels,
            test_features,
            fold=fold,
            classes=len(train.classes),
            seed=p.audit.seed,
        )
    pool = SplitArrays(
        images=np.concatenate([train.images, val.images]),
        labels=np.concatenate([train.labels, val.labels]),
        classes=train.classes,
        files=train.files + val.files,
    )
    return network_out_of_sample(pool, test, fold, p.audit_training(), device)


if __name__ == "__main__":
    run_stage(main)
