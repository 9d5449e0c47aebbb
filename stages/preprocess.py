"""Stage preprocess: cut video clips into frames, split the raw tree (a patient's or a clip's
images together), decode and resize every image into uint8 arrays, and write a data report
listing counts per class and split, every skipped file, and duplicates across splits."""

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

from imgpipe.data.clips import expand_clips
from imgpipe.data.layout import read_source_notes
from imgpipe.data.preprocess import (
    assign_splits,
    data_report,
    list_samples,
    worker_count,
    write_split,
)
from imgpipe.data.splits import SPLITS
from imgpipe.data.video import FrameRate
from imgpipe.io import write_json
from imgpipe.params import load_params
from imgpipe.stage import run_stage

log = logging.getLogger("imgpipe.stages.preprocess")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="ImageFolder tree from download")
    parser.add_argument("--out", type=Path, required=True, help="folder for <split>/ arrays")
    parser.add_argument("--report", type=Path, required=True, help="data report JSON to write")
    args = parser.parse_args()

    p = load_params().preprocess
    workers = worker_count(p.workers)
    classes, found = list_samples(args.raw, p.group_pattern)
    rate = FrameRate(p.frames_per_second, p.frame_stride, p.max_frames_per_clip)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Frames live only until their split is written; the split arrays are the output.
    with tempfile.TemporaryDirectory(prefix=".frames-", dir=args.out.parent) as scratch:
        found, clips = expand_clips(found, args.raw, Path(scratch), rate, workers)
        patterned = p.group_pattern is not None
        grouped = patterned or clips.clips > 0
        splits = assign_splits(
            found, p.val_fraction, p.test_fraction, p.split_seed, grouped=grouped
        )
        outcomes = {
            split: write_split(
                args.raw,
                splits[split],
                classes,
                args.out / split,
                image_size=p.image_size,
                channels=p.channels,
                workers=workers,
            )
            for split in SPLITS
        }
    report = data_report(
        classes,
        splits,
        outcomes,
        grouped=grouped,
        patterned=patterned,
        near_duplicate_distance=p.near_duplicate_distance,
        video=clips.summary() if clips.clips else None,
        skipped_clips=clips.skipped,
        source_notes=read_source_notes(args.raw),
    )
    write_json(args.report, report)
    log.info(
        "images per split %s (shares %s); %d skipped",
        report["totals"],
        report["split_fractions"],
        report["skipped_count"],
    )
    if clips.clips:
        log.info(
            "video: %d frames from %d clips (%d skipped)",
            clips.frames,
            clips.clips,
            len(clips.skipped),
        )
    if grouped:
        warn_about_groups(report["groups"], args.report)
    if report.get("links_outside_source"):
        log.warning(
            "%d symbolic links in the source point outside it; see %s",
            len(report["links_outside_source"]),
            args.report,
        )
    if report["empty_classes"]:
        log.warning("classes without a single usable image: %s", report["empty_classes"])
    if report["duplicate_groups"]:
        log.warning(
            "%d images appear in more than one class or split; see %s",
            report["duplicate_groups"],
            args.report,
        )
    near = report.get("near_duplicates", {}).get("pairs_count", 0)
    if near:
        log.warning(
            "%d pairs of near-duplicate images (perceptual hashes within %d bits) sit "
            "in different classes or splits; see %s",
            near,
            p.near_duplicate_distance,
            args.report,
        )


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
