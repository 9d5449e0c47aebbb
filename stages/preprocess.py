"""Stage preprocess: split the raw tree, decode and resize every image into uint8 arrays,
and write a data report listing counts per class and split and every skipped file."""

import argparse
import logging
from pathlib import Path
from typing import Any

from imgpipe.io import write_json
from imgpipe.params import load_params
from imgpipe.preprocess import (
    assign_splits,
    data_report,
    list_samples,
    worker_count,
    write_split,
)
from imgpipe.runner import run_stage
from imgpipe.splits import SPLITS

log = logging.getLogger("imgpipe.stages.preprocess")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="ImageFolder tree from download")
    parser.add_argument("--out", type=Path, required=True, help="folder for <split>/ arrays")
    parser.add_argument("--report", type=Path, required=True, help="data report JSON to write")
    args = parser.parse_args()

    p = load_params().preprocess
    grouped = p.group_pattern is not None
    classes, found = list_samples(args.raw, p.group_pattern)
    splits = assign_splits(found, p.val_fraction, p.test_fraction, p.split_seed, grouped=grouped)
    outcomes = {
        split: write_split(
            args.raw,
            splits[split],
            classes,
            args.out / split,
            image_size=p.image_size,
            channels=p.channels,
            workers=worker_count(p.workers),
        )
        for split in SPLITS
    }
    report = data_report(classes, splits, outcomes, grouped=grouped)
    write_json(args.report, report)
    log.info("images per split %s (shares %s); %d skipped", report["totals"],
             report["split_fractions"], report["skipped_count"])  # fmt: skip
    if grouped:
        warn_about_groups(report["groups"], args.report)
    if report["empty_classes"]:
        log.warning("classes without a single usable image: %s", report["empty_classes"])
    if report["duplicate_groups"]:
        log.warning("%d images appear in more than one class or split; see %s",
                    report["duplicate_groups"], args.report)  # fmt: skip


def warn_about_groups(groups: dict[str, Any], report: Path) -> None:
    log.info("groups per split %s", groups["per_split"])
    for key, what in (
        ("unmatched_count", "paths the group pattern does not match (each its own group)"),
        ("spanning_classes_count", "groups with images in more than one class"),
        ("in_several_splits_count", "groups in more than one split (a pre-split source)"),
    ):
        if groups[key]:
            log.warning("%d %s; see %s", groups[key], what, report)


if __name__ == "__main__":
    run_stage(main)
