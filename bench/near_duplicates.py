"""``python -m bench near-duplicates``: what the near-duplicate search costs, against the
decoding preprocess does anyway."""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import Commands, add_jpeg_arguments, jpeg_samples, log, run_jpeg_bench, timed
from imgpipe.data.preprocess import write_split
from imgpipe.data.workers import worker_count

NAME = "near-duplicates"


def add_parser(benches: Commands) -> None:
    """Register the command on ``benches`` (an ``add_subparsers`` result)."""
    sub = benches.add_parser(
        NAME, help="perceptual hashing and the all-pairs search against preprocess's decoding"
    )
    add_jpeg_arguments(sub, workers="decoding processes (0: all)")
    sub.add_argument("--distance", type=int, default=32, help="largest distance in bits")
    sub.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    run_jpeg_bench(args, bench_near_duplicates, distance=args.distance)


def bench_near_duplicates(
    folder: Path, out: Path, *, count: int, size: int, target: int, workers: int, distance: int
) -> dict[str, Any]:
    """Preprocess's decoding with the perceptual hash against the same decoding without it, and
    the all-pairs search over the hashes against the decoding time.

    Args:
        folder: where the synthetic JPEGs are (created when empty).
        out: scratch folder for the arrays.
        count, size, target, workers: as for :func:`bench.preprocess.bench_preprocess`.
        distance: the search's ``preprocess.near_duplicate_distance``.
    """
    from unittest import mock

    from imgpipe.data.near_duplicates import Place, near_duplicate_pairs

    classes, samples = jpeg_samples(folder, count, size)
    workers = worker_count(workers)
    decode = partial(
        write_split, folder, samples, classes, image_size=target, channels=3, workers=workers
    )
    # The workers are forked, so the patched hash reaches them too.
    with mock.patch("imgpipe.data.preprocess.perceptual_hash", lambda pixels: "00" * 32):
        bare, _ = timed(lambda: decode(out / "bare"))
    started = time.perf_counter()
    outcome = decode(out / "hashed")
    hashed = time.perf_counter() - started
    hashes = list(outcome.hashes.values())
    # Alternate splits so that every pair is a candidate, as across train and test.
    places = [Place(str(i % 3), 0, digest) for i, digest in enumerate(outcome.digests.values())]
    started = time.perf_counter()
    pairs = near_duplicate_pairs(hashes, places, distance)
    search = time.perf_counter() - started
    results: dict[str, Any] = {
        "images": len(hashes),
        "target_size": target,
        "workers": workers,
        "max_distance_bits": distance,
        "decode_seconds": round(bare, 3),
        "decode_and_hash_seconds": round(hashed, 3),
        "hash_overhead": round(hashed / bare, 3),
        "search_seconds": round(search, 3),
        "search_over_decode": round(search / bare, 3),
        "pairs_found": len(pairs),
    }
    log.info("%s", results)
    return results
