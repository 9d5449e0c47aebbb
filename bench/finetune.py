"""``python -m bench finetune``: ``finetune: head`` against full fine-tuning, seconds per epoch
once the feature cache exists, and the one-off cost of building it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Clock, Commands, add_output_argument, emit, synthetic_split
from imgpipe.training.settings import TrainConfig

NAME = "finetune"
HEAD_EPOCHS = 20  # a head epoch takes milliseconds: 20 of them stand out of the noise


def add_parser(benches: Commands) -> None:
    """Register the command on ``benches`` (an ``add_subparsers`` result)."""
    sub = benches.add_parser(
        NAME,
        help="finetune: head against full fine-tuning: seconds per epoch once the feature cache "
        "exists, and the one-off cost of building it (resnet18 at 224 by default)",
    )
    sub.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="the training settings both runs share",
    )
    sub.add_argument("--architecture", default="resnet18", help="timm model")
    sub.add_argument("--image-size", type=int, default=224, help="input side (RGB)")
    sub.add_argument("--images", type=int, default=256, help="training images")
    sub.add_argument("--batch-size", type=int, default=32, help="images per step")
    add_output_argument(sub)
    sub.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from imgpipe.params import load_params

    config = (
        load_params(args.params)
        .training()
        .replace(model=args.architecture, batch_size=args.batch_size, warmup_epochs=0)
    )
    emit(bench_finetune(config, image_size=args.image_size, images=args.images), args.output)


def bench_finetune(
    config: TrainConfig, *, image_size: int, images: int, clock: Clock = time.perf_counter
) -> dict[str, Any]:
    """``finetune: head`` against ``full`` on the same synthetic RGB images and settings.

    Each mode trains 1 epoch and then more (full 2, head 21); the difference is the cost of
    epochs alone (set-up, first validation and, for ``head``, reading the cache cancel out).
    The head's feature cache is built by a first run, timed on its own.
    """
    import tempfile

    import torch

    from imgpipe.training.loop import train_classifier

    rng = np.random.default_rng(0)
    train = synthetic_split(rng, images, image_size, 3, classes=10)
    val = synthetic_split(rng, max(1, images // 10), image_size, 3, classes=10)
    config = config.replace(
        device="cpu",
        processes=1,
        compile=False,
        early_stopping=0,
        pretrained=False,
        freeze="none",
        freeze_epochs=0,
    )
    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-features-") as cache:

        def seconds(finetune: str, epochs: int) -> float:
            started = clock()
            changes = config.replace(finetune=finetune, epochs=epochs)
            train_classifier(train, val, changes, feature_cache=Path(cache))
            return clock() - started

        first = seconds("head", 1)  # builds the cache
        head = [seconds("head", 1), seconds("head", 1 + HEAD_EPOCHS)]
        full = [seconds("full", 1), seconds("full", 2)]
    head_epoch, full_epoch = (head[1] - head[0]) / HEAD_EPOCHS, full[1] - full[0]
    return {
        "architecture": config.model,
        "input": [3, image_size, image_size],
        "images": images,
        "threads": torch.get_num_threads(),
        "cache_build_seconds": round(first - head[0], 4),
        "head_seconds_per_epoch": round(head_epoch, 6),
        "full_seconds_per_epoch": round(full_epoch, 4),
        "speedup_per_epoch": round(full_epoch / max(head_epoch, 1e-6), 1),
    }
