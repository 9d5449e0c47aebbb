"""Stage train: fit the timm model named by ``model`` on the train split, keep the epoch with
the best validation accuracy, and log per-epoch curves with dvclive. The state after each epoch
is kept at --state, so a killed run, started again, continues where it was. With
``processes`` > 1 the stage reruns itself under torchrun: DDP over that many processes."""

import argparse
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from imgpipe.model import ModelMeta, save_checkpoint
from imgpipe.params import Params, load_params
from imgpipe.preprocess import SplitArrays, load_split
from imgpipe.runner import run_stage
from imgpipe.train import (
    Augmentation,
    Processes,
    open_live,
    relaunch_under_torchrun,
    start_processes,
    stop_processes,
    train_classifier,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ and val/")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--live", type=Path, required=True, help="dvclive folder (curves, summary)")
    parser.add_argument(
        "--state", type=Path, required=True, help="resume point, kept after every epoch"
    )
    args = parser.parse_args()

    p = load_params()
    if p.processes > 1 and "WORLD_SIZE" not in os.environ:
        relaunch_under_torchrun(p.processes, __file__, sys.argv[1:])
        return
    processes = start_processes(p.device)
    if processes.rank != 0:  # rank 0 reports; the others only train
        logging.getLogger().setLevel(logging.WARNING)
    train, val = load_split(args.data / "train"), load_split(args.data / "val")
    try:
        train_and_save(args, p, processes, train, val)
    finally:
        stop_processes(processes)
    if processes.rank == 0:
        args.state.unlink(missing_ok=True)  # finished: the next run starts afresh


def train_and_save(
    args: argparse.Namespace, p: Params, processes: Processes, train: SplitArrays, val: SplitArrays
) -> None:
    with open_live(args.live) if processes.rank == 0 else nullcontext() as live:
        result = train_classifier(
            train,
            val,
            architecture=p.model,
            pretrained=p.pretrained,
            epochs=p.epochs,
            batch_size=p.batch_size,
            lr=p.lr,
            weight_decay=p.weight_decay,
            warmup_epochs=p.warmup_epochs,
            label_smoothing=p.label_smoothing,
            ema_decay=p.ema_decay,
            optimizer=p.optimizer,
            schedule=p.schedule,
            grad_clip=p.grad_clip,
            early_stopping=p.early_stopping,
            class_balance=p.class_balance,
            compile_model=p.compile,
            seed=p.seed,
            augmentation=Augmentation(**p.augment.model_dump()),
            device=p.device,
            metric_logger=live,
            state_path=args.state,
            processes=processes,
        )
        if processes.rank != 0:
            return
        live.summary["best"] = result.best
        meta = ModelMeta(
            architecture=p.model,
            classes=train.classes,
            image_size=train.images.shape[1],
            channels=train.images.shape[3],
            mean=result.mean,
            std=result.std,
            training={"best_epoch": result.best_epoch, **result.best},
        )
        save_checkpoint(args.model, result.model, meta)


if __name__ == "__main__":
    run_stage(main)
