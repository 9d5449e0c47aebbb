"""Benchmarks of imgpipe, one command and one module each, printing ratios against a baseline
measured in the same run (shared, noisy machines make absolute timings meaningless across runs):

    python -m bench preprocess       decoding throughput, all cores vs one; peak memory
    python -m bench near-duplicates  the perceptual-hash search's cost against decoding
    python -m bench train            train stage vs a bare PyTorch loop
    python -m bench finetune         finetune: head vs full fine-tuning, per epoch
    python -m bench features         frozen features: onnxruntime vs torch eager
    python -m bench predict          imgpipe predict vs onnxruntime alone
    python -m bench serve            imgpipe serve under load vs onnxruntime's batch rate
    python -m bench bootstrap        bootstrap intervals, all resamples at once vs a sklearn loop
    python -m bench audit            the label audit on cached features vs its bare K-fold fits
    python -m bench photos           the whole dvc repro on N photos, each stage, vs an older commit

Run from the repository root in the project's environment (``./run.sh python -m bench ...``).
Not part of the installed package: its load client and memory sampler are dev dependencies.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial

from bench import (
    audit,
    bootstrap,
    features,
    finetune,
    near_duplicates,
    photos,
    predict,
    preprocess,
    serve,
    train,
)
from imgpipe.stage import run_stage

BENCHMARKS = (
    preprocess,
    near_duplicates,
    train,
    finetune,
    features,
    predict,
    serve,
    bootstrap,
    audit,
    photos,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="imgpipe benchmarks printing ratios from one run"
    )
    benches = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for benchmark in BENCHMARKS:
        benchmark.add_parser(benches)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark; a user error (a missing model, say) exits 1 with one log line."""
    args = build_parser().parse_args(argv)
    run_stage(partial(args.handler, args))
    return 0


if __name__ == "__main__":
    main()
