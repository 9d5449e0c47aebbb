"""Stage preprocess: cut video clips into frames, split the raw tree (a patient's or a clip's
images together), decode and resize every image into uint8 arrays, and write a data report
listing counts per class and split, every skipped file, and duplicates across splits."""

import argparse
import tempfile
from pathlib import Path

from imgpipe.data.clips import expand_clips
from imgpipe.data.data_report import data_report, log_data_report
from imgpipe.data.layout import read_source_notes
from imgpipe.data.preprocess import write_splits
from imgpipe.data.samples import list_samples
from imgpipe.data.splitting import assign_splits
from imgpipe.data.video import FrameRate
from imgpipe.data.workers import worker_count
from imgpipe.io import write_json
from imgpipe.params import load_params
from imgpipe.stage import run_stage


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
        found, extraction = expand_clips(found, args.raw, Path(scratch), rate, workers)
        patterned = p.group_pattern is not None
        grouped = patterned or extraction.clips_found > 0
        splits = assign_splits(
            found, p.val_fraction, p.test_fraction, p.split_seed, grouped=grouped
        )
        outcomes = write_splits(
            args.raw,
            splits,
            classes,
            args.out,
            image_size=p.image_size,
            channels=p.channels,
            workers=workers,
            grouped=grouped,
        )
    report = data_report(
        classes,
        splits,
        outcomes,
        grouped=grouped,
        patterned=patterned,
        near_duplicate_distance=p.near_duplicate_distance,
        video=extraction.summary() if extraction.clips_found else None,
        skipped_clips=extraction.skipped,
        source_notes=read_source_notes(args.raw),
    )
    write_json(args.report, report)
    log_data_report(report, args.report)


if __name__ == "__main__":
    run_stage(main)
