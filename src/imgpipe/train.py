"""The ``train`` stage's library: fit a timm classifier on preprocessed uint8 arrays.

Deterministic on CPU for a given seed, machine and thread count: the seed drives the shuffle,
the augmentation and the initial weights, and torch runs in deterministic mode. Batches are
gathered straight from the (memory-mapped) arrays and augmented as uint8 tensors on the
training device, so nothing is decoded during training.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from timm.scheduler.cosine_lr import CosineLRScheduler
from timm.utils.model_ema import ModelEmaV3
from torch import nn
from torchvision.transforms import v2

from imgpipe.errors import ImgpipeError
from imgpipe.model import Classifier, channel_statistics, create_network
from imgpipe.preprocess import SplitArrays

log = logging.getLogger(__name__)


class MetricLogger(Protocol):
    """What training needs from a logger: dvclive's ``Live`` fits."""

    def log_metric(self, name: str, val: float) -> None: ...
    def next_step(self) -> None: ...


@dataclass(frozen=True)
class Augmentation:
    """Random geometry applied per image during training; zeros switch it off."""

    degrees: float = 0.0
    translate: float = 0.0
    scale: float = 0.0
    hflip: bool = False

    def build(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        steps: list[nn.Module] = []
        if self.degrees or self.translate or self.scale:
            steps.append(
                v2.RandomAffine(
                    degrees=self.degrees,
                    translate=(self.translate, self.translate) if self.translate else None,
                    scale=(1 - self.scale, 1 + self.scale) if self.scale else None,
                )
            )
        if self.hflip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps) if steps else None


@dataclass
class TrainResult:
    model: Classifier  # weights of the best epoch by validation accuracy
    best_epoch: int
    mean: list[float]  # per-channel normalisation the model applies, in [0, 1] units
    std: list[float]
    history: list[dict[str, float]] = field(default_factory=list)
    images_per_second: float = 0.0

    @property
    def best(self) -> dict[str, float]:
        return self.history[self.best_epoch - 1]


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ImgpipeError("device: 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(device)


def open_live(folder: Path) -> Any:
    """dvclive's ``Live`` writing to ``folder``, with dvc.yaml left alone (it declares the
    metrics and plots itself; ``dvcyaml=False`` stops dvclive from rewriting it)."""
    from dvclive.live import Live
    from scmrepo.exceptions import SCMError

    try:
        return Live(str(folder), dvcyaml=False, save_dvc_exp=False)
    except SCMError as error:  # dvclive needs a base commit to attach metrics to
        raise ImgpipeError(
            f"git: {error}; make a first commit (git add -A && git commit) before `dvc repro`"
        ) from None


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train_classifier(
    train: SplitArrays,
    val: SplitArrays,
    *,
    architecture: str,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_epochs: float,
    label_smoothing: float,
    ema_decay: float,
    seed: int,
    augmentation: Augmentation,
    pretrained: bool = False,
    device: str = "auto",
    metric_logger: MetricLogger | None = None,
) -> TrainResult:
    """Train with AdamW, linear warm-up then cosine decay, keeping the best epoch by val accuracy.

    Args:
        train: training split.
        val: validation split, evaluated after every epoch.
        architecture: timm model name.
        epochs: passes over the training split.
        batch_size: images per optimiser step.
        lr: peak learning rate, reached after ``warmup_epochs``.
        weight_decay: AdamW decoupled weight decay.
        warmup_epochs: linear warm-up length (may be fractional).
        label_smoothing: cross-entropy label smoothing.
        ema_decay: per-step decay of the weight average that is evaluated and kept; 0 disables.
        seed: drives initial weights, shuffling and augmentation.
        augmentation: random geometry per training image.
        pretrained: start from timm's hub weights.
        device: ``auto``, ``cpu`` or ``cuda``.
        metric_logger: receives per-epoch metrics (dvclive's ``Live``).
    """
    seed_everything(seed)
    target = resolve_device(device)
    mean, std = channel_statistics(train.images)
    net = create_network(architecture, len(train.classes), train.images.shape[-1], pretrained)
    model = Classifier(net, mean, std).to(target)
    if target.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    # Warm-up ramps the decay towards ema_decay, so short runs are not dragged to the init.
    average = ModelEmaV3(model, decay=ema_decay, use_warmup=True) if ema_decay > 0 else None
    evaluated: Classifier = average.module if average else model  # type: ignore[assignment]

    steps_per_epoch = math.ceil(len(train) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = CosineLRScheduler(
        optimizer,
        t_initial=epochs * steps_per_epoch,
        warmup_t=round(warmup_epochs * steps_per_epoch),
        warmup_lr_init=lr / 100,
        lr_min=lr / 100,
        t_in_epochs=False,
    )
    augment = augmentation.build()
    shuffler = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] = {}
    started, seen, step = time.perf_counter(), 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=shuffler).numpy()
        loss_sum = 0.0
        for start in range(0, len(order), batch_size):
            rows = np.sort(order[start : start + batch_size])  # sorted: sequential memmap reads
            images, labels = _batch(train, rows, target)
            if augment is not None:
                images = torch.stack([augment(image) for image in images])
            with _autocast(target):
                loss = F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            step += 1
            schedule.step_update(step)
            if average is not None:
                average.update(model, step=step)
            loss_sum += loss.item() * len(rows)
            seen += len(rows)
        val_loss, val_accuracy = evaluate_split(evaluated, val, batch_size, target)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / len(order),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": optimizer.param_groups[0]["lr"],
        }
        history.append(record)
        log.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_accuracy %.4f",
            epoch, epochs, record["train_loss"], val_loss, val_accuracy,
        )  # fmt: skip
        if metric_logger is not None:
            for name, value in record.items():
                if name != "epoch":
                    metric_logger.log_metric(name.replace("_", "/", 1), value)
            metric_logger.next_step()
        if _is_better(record, history):
            best_state = copy.deepcopy(evaluated.state_dict())
    elapsed = time.perf_counter() - started
    best_epoch = max(history, key=_rank)["epoch"]
    final = Classifier(
        create_network(architecture, len(train.classes), train.images.shape[-1]), mean, std
    )
    final.load_state_dict({k: v.cpu() for k, v in best_state.items()})
    return TrainResult(final.eval(), int(best_epoch), mean, std, history, seen / elapsed)


def _rank(record: dict[str, float]) -> tuple[float, float]:
    return record["val_accuracy"], -record["val_loss"]


def _is_better(record: dict[str, float], history: list[dict[str, float]]) -> bool:
    return all(_rank(record) > _rank(other) for other in history[:-1])


def _batch(
    split: SplitArrays, rows: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.ascontiguousarray(split.images[rows])).permute(0, 3, 1, 2)
    labels = torch.from_numpy(split.labels[rows])
    if device.type == "cuda":
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return images, labels.to(device, non_blocking=True)
    return images.contiguous(), labels


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA; full precision on CPU (bf16 is slower on most CPUs)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict_split(
    model: Classifier, split: SplitArrays, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Class probabilities for every image of ``split``, in order (float32, on the CPU)."""
    model.eval()
    outputs = []
    for start in range(0, len(split), batch_size):
        rows = np.arange(start, min(start + batch_size, len(split)))
        images, _ = _batch(split, rows, device)
        with _autocast(device):
            outputs.append(model(images).float().softmax(1).cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, len(split.classes))


def evaluate_split(
    model: Classifier, split: SplitArrays, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split``."""
    probabilities = predict_split(model, split, batch_size, device)
    labels = torch.from_numpy(split.labels)
    loss = F.nll_loss(probabilities.clamp_min(1e-12).log(), labels).item()
    accuracy = (probabilities.argmax(1) == labels).float().mean().item()
    return float(loss), float(accuracy)
