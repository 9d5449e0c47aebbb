"""``python -m bench preprocess``: decode+resize throughput on all cores against one worker, and
peak memory against the size of the arrays written."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import Commands, add_jpeg_arguments, jpeg_samples, log, run_jpeg_bench, timed
from imgpipe.data.preprocess import write_split
from imgpipe.data.workers import worker_count

NAME = "preprocess"


def add_parser(benches: Commands) -> None:
    """Register the command on ``benches`` (an ``add_subparsers`` result)."""
    sub = benches.add_parser(
        NAME, help="decode+resize throughput, all cores vs one worker; peak memory vs array size"
    )
    add_jpeg_arguments(sub, workers="parallel run's processes (0: all)")
    sub.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    run_jpeg_bench(args, bench_preprocess)


def bench_preprocess(
    folder: Path, out: Path, *, count: int, size: int, target: int, workers: int
) -> dict[str, Any]:
    """Throughput of preprocess on ``workers`` processes against one worker, and peak memory
    against the size of the arrays written.

    Args:
        folder: where the synthetic JPEGs are (created when empty).
        out: scratch folder for the arrays.
        count: number of images.
        size: side of the synthetic JPEGs.
        target: side the images are resized to.
        workers: processes for the parallel run (0 = every core).
    """
    classes, samples = jpeg_samples(folder, count, size)
    workers = worker_count(workers)
    results: dict[str, Any] = {"images": len(samples), "source_size": size, "target_size": target}
    for name, processes in (("one_worker", 1), ("all_workers", workers)):
        write = partial(
            write_split,
            folder,
            samples,
            classes,
            out / name,
            image_size=target,
            channels=3,
            workers=processes,
        )
        seconds, peak = timed(write)
        array_bytes = (out / name / "images.npy").stat().st_size
        results[name] = {
            "workers": processes,
            "seconds": round(seconds, 4),
            "images_per_second": round(len(samples) / seconds, 1),
            "peak_rss_bytes": peak,
            "array_bytes": array_bytes,
            "peak_rss_over_array_size": round(peak / array_bytes, 3),
        }
        log.info("%s: %s", name, results[name])
    results["speedup"] = round(
        results["all_workers"]["images_per_second"] / results["one_worker"]["images_per_second"], 2
    )
    return results
