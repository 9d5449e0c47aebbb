"""Stage train: fit the timm model named by ``model`` on the train split, keep the last
epoch's weights (or the best epoch's by validation accuracy: keep_epoch), and log per-epoch
curves with dvclive. The state after each epoch is kept at --state, so a killed run, started
again, continues where it was. With
``processes`` > 1 the stage reruns itself under torchrun: DDP over that many processes. The
training images the audit listed for exclusion (audit.exclude; --exclude) are left out."""

import argparse
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from imgpipe.audit.exclusions import drop_files, read_exclusions
from imgpipe.data.splits import SplitArrays, load_split
from imgpipe.params import load_params
from imgpipe.stage import run_stage
from imgpipe.training.distributed import (
    Processes,
    relaunch_under_torchrun,
    start_processes,
    stop_processes,
)
from imgpipe.training.loop import open_live, train_classifier
from imgpipe.training.model import ModelMeta, save_checkpoint
from imgpipe.training.settings import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ and val/")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--live", type=Path, required=True, help="dvclive folder (curves, summary)")
    parser.add_argument(
        "--state", type=Path, required=True, help="resume point, kept after every epoch"
    )
    parser.add_argument(
        "--features",
        type=Path,
        required=True,
        help="cache folder of frozen features (finetune: head, lp-ft), reused across runs",
    )
    parser.add_argument(
        "--exclude",
        type=Path,
        required=True,
        help="the audit's list of training images to leave out (empty unless audit.exclude)",
    )
    args = parser.parse_args()

    config = load_params().training()
    if config.processes > 1 and "WORLD_SIZE" not in os.environ:
        relaunch_under_torchrun(config.processes, config.device, __file__, sys.argv[1:])
        return
    processes = start_processes(config.device)
    if processes.rank != 0:  # rank 0 reports; the others only train
        logging.getLogger().setLevel(logging.WARNING)
    excluded = read_exclusions(args.exclude)
    train = drop_files(load_split(args.data / "train"), excluded)
    val = load_split(args.data / "val")
    if excluded:
        logging.getLogger("imgpipe.stages.train").info(
            "left out %d training images the audit suspects of a wrong label", len(excluded)
        )
    try:
        train_and_save(
            config,
            processes,
            train,
            val,
            live=args.live,
            checkpoint=args.model,
            state=args.state,
            features=args.features,
            excluded=len(excluded),
        )
    finally:
        stop_processes(processes)
    if processes.local_rank == 0:  # each node keeps its own copy of the state
        args.state.unlink(missing_ok=True)  # finished: the next run starts afresh


def train_and_save(
    config: TrainConfig,
    processes: Processes,
    train: SplitArrays,
    val: SplitArrays,
    *,
    live: Path,
    checkpoint: Path,
    state: Path,
    features: Path,
    excluded: int = 0,
) -> None:
    """Train (resuming from ``state`` when it holds this run's progress), logging the curves to
    the dvclive folder ``live``; rank 0 then writes the kept epoch's model to ``checkpoint``.
    ``excluded``: how many training images the audit had left out (kept in the summary)."""
    with open_live(live) if processes.rank == 0 else nullcontext() as logger:
        result = train_classifier(
            train,
            val,
            config,
            metric_logger=logger,
            state_path=state,
            feature_cache=features,
            processes=processes,
        )
        if processes.rank != 0:
            return
        logger.summary["kept"] = result.kept
        logger.summary["processes"] = result.processes  # torchrun world size that trained it
        logger.summary["audit_excluded"] = excluded  # training images audit.exclude dropped
        meta = ModelMeta(
            architecture=config.model,
            classes=train.classes,
            image_size=train.images.shape[1],
            channels=train.images.shape[3],
            mean=result.mean,
            std=result.std,
            # finetune tells calibrate and evaluate whether the backbone is the frozen one
            # whose cached features they can reuse.
            training={"kept_epoch": result.kept_epoch, "finetune": config.finetune, **result.kept},
        )
        save_checkpoint(checkpoint, result.model, meta)


if __name__ == "__main__":
    run_stage(main)
