"""Stage train: fit the timm model named by ``model`` on the train split, keep the epoch with
the best validation accuracy, and log per-epoch curves with dvclive. The state after each epoch
is kept at --state, so a killed run, started again, continues where it was."""

import argparse
from pathlib import Path

from imgpipe.model import ModelMeta, save_checkpoint
from imgpipe.params import load_params
from imgpipe.preprocess import load_split
from imgpipe.runner import run_stage
from imgpipe.train import Augmentation, open_live, train_classifier


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
    train, val = load_split(args.data / "train"), load_split(args.data / "val")
    with open_live(args.live) as live:
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
        )
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
    args.state.unlink(missing_ok=True)  # finished: the next run starts afresh


if __name__ == "__main__":
    run_stage(main)
