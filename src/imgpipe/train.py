"""The ``train`` stage's library: fit a timm classifier on preprocessed uint8 arrays.

Deterministic on CPU for a given seed, machine and thread count: the seed drives the shuffle,
the augmentation and the initial weights, and torch runs in deterministic mode. Batches are
gathered straight from the (memory-mapped) arrays and augmented as uint8 tensors on the
training device, so nothing is decoded during training.

The pieces, in the order a run uses them: :func:`build_trainer` (model, optimiser, schedule,
weight average), :func:`~imgpipe.resume.resume`, then per epoch :func:`train_one_epoch` (of
:func:`train_step` calls) and :func:`validate`, the best epoch kept and the state saved.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, assert_never

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from timm.scheduler.cosine_lr import CosineLRScheduler
from timm.utils.model_ema import ModelEmaV3

from imgpipe.augment import build_augmentation
from imgpipe.config import TrainConfig
from imgpipe.distributed import Processes, share_buffers_of_rank_0, sum_over_processes
from imgpipe.errors import ImgpipeError
from imgpipe.inference import autocast, evaluate_split, gather_batch, resolve_device
from imgpipe.model import Classifier, channel_statistics, create_network
from imgpipe.resume import Progress, Resumable, resume, save_state, state_key
from imgpipe.splits import SplitArrays

log = logging.getLogger(__name__)


class MetricLogger(Protocol):
    """What training needs from a logger: dvclive's ``Live`` fits."""

    def log_metric(self, name: str, val: float) -> None: ...
    def next_step(self) -> None: ...


@dataclass
class TrainResult:
    model: Classifier  # weights of the best epoch by validation accuracy
    best_epoch: int
    mean: list[float]  # per-channel normalisation the model applies, in [0, 1] units
    std: list[float]
    history: list[dict[str, float]] = field(default_factory=list)
    images_per_second: float = 0.0
    processes: int = 1  # how many processes trained it (torchrun world size)

    @property
    def best(self) -> dict[str, float]:
        return self.history[self.best_epoch - 1]


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
    config: TrainConfig,
    *,
    metric_logger: MetricLogger | None = None,
    state_path: Path | None = None,
    processes: Processes | None = None,
) -> TrainResult:
    """Train, keeping the best epoch by validation accuracy (then loss).

    Args:
        train: training split.
        val: validation split, evaluated after every epoch.
        config: every training setting (``params.yaml``'s top-level keys).
        metric_logger: receives per-epoch metrics (dvclive's ``Live``); rank 0 only.
        state_path: where the state after each epoch is kept; a run started with the same
            settings and data continues from it (after a crash or a kill) with the same result
            as an uninterrupted run. The caller deletes it once the model is saved.
        processes: this process's place in a torchrun job
            (:func:`~imgpipe.distributed.start_processes`); None when alone. With several, the
            model is wrapped in DistributedDataParallel and each process takes its share of
            every ``batch_size`` batch (so the optimisation step sees the same global batch);
            rank 0 alone writes the state.
    """
    processes = processes or Processes()
    trainer = build_trainer(config, train, processes)
    key = state_key(config.fingerprint(), train, val)
    progress = resume(state_path, key, trainer.resumable(), processes.rank)
    if metric_logger is not None:
        for record in progress.history:  # the curves the interrupted run had logged
            log_epoch(metric_logger, record)
    started, seen = time.perf_counter(), 0
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        train_loss, images = train_one_epoch(trainer, train, progress)
        seen += images
        record = {"epoch": epoch, "train_loss": train_loss, **validate(trainer, val)}
        record["lr"] = trainer.optimizer.param_groups[0]["lr"]
        progress.history.append(record)
        progress.epoch = epoch
        log.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_accuracy %.4f",
            epoch, config.epochs, train_loss, record["val_loss"], record["val_accuracy"],
        )  # fmt: skip
        if metric_logger is not None:
            log_epoch(metric_logger, record)
        if _is_better(record, progress.history):
            progress.best_state = copy.deepcopy(trainer.evaluated.state_dict())
        if state_path is not None:
            save_state(state_path, key, progress, trainer.resumable(), processes)
        stale = epoch - _best_epoch(progress.history)
        if config.early_stopping and stale >= config.early_stopping:
            log.info("early stopping: no better validation score for %d epochs", stale)
            break
    rate = seen * processes.world / (time.perf_counter() - started) if seen else 0.0
    return _result(trainer, progress, train, rate)


@dataclass
class Trainer:
    """The moving parts of one training run."""

    config: TrainConfig
    processes: Processes
    device: torch.device
    model: Classifier  # the weights being optimised
    mean: list[float]  # the normalisation it applies, from the training images
    std: list[float]
    forward: Callable[[torch.Tensor], torch.Tensor]  # the model, or its DDP/compiled wrapper
    average: ModelEmaV3 | None  # the weight average that is validated and kept
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    augment: Callable[[torch.Tensor], torch.Tensor] | None
    class_weights: torch.Tensor  # 1 / class frequency (class_balance: sampler draws by them)
    loss_weights: torch.Tensor | None  # the same on the device (class_balance: loss)
    shuffler: torch.Generator

    @property
    def evaluated(self) -> Classifier:
        return self.average.module if self.average else self.model  # type: ignore[return-value]

    def resumable(self) -> Resumable:
        average = self.average.module if self.average is not None else None
        return Resumable(self.model, self.optimizer, self.schedule, average, self.shuffler)


def build_trainer(config: TrainConfig, train: SplitArrays, processes: Processes) -> Trainer:
    """Seed, then create the model (normalised by the training images' statistics), its
    placement, weight average, optimiser and schedule. The order is fixed: it decides which
    random numbers initialise the weights."""
    seed_everything(config.seed)
    device = resolve_device(config.device, processes.local_rank)
    mean, std = channel_statistics(train.images)
    net = create_network(config.model, len(train.classes), train.images.shape[-1],
                         config.pretrained)  # fmt: skip
    model, forward = _place(Classifier(net, mean, std), device, config.compile, processes)
    # Warm-up ramps the decay towards ema_decay, so short runs are not dragged to the init.
    average = (
        ModelEmaV3(model, decay=config.ema_decay, use_warmup=True) if config.ema_decay > 0 else None
    )
    if processes.rank:  # the other processes draw their own augmentation (rank 0 keeps seed)
        torch.manual_seed(config.seed + processes.rank)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr,
                                config.weight_decay)  # fmt: skip
    schedule = Schedule(
        config.schedule, optimizer, config.lr, config.epochs * steps_per_epoch,
        round(config.warmup_epochs * steps_per_epoch),
    )  # fmt: skip
    weights = class_weights(train.labels, len(train.classes))
    return Trainer(
        config, processes, device, model, mean, std, forward, average, optimizer, schedule,
        build_augmentation(config.augment), weights,
        weights.to(device) if config.class_balance == "loss" else None,
        torch.Generator().manual_seed(config.seed),
    )  # fmt: skip


def train_one_epoch(trainer: Trainer, train: SplitArrays, progress: Progress) -> tuple[float, int]:
    """One pass over the training split: mean loss (over all processes) and the number of
    images this process trained on."""
    config, processes = trainer.config, trainer.processes
    trainer.model.train()
    order = epoch_order(train.labels, trainer.class_weights, config.class_balance == "sampler",
                        trainer.shuffler)  # fmt: skip
    loss_sum, seen = 0.0, 0
    for start in range(0, len(order), config.batch_size):
        # This process's share of the global batch; sorted: sequential memmap reads.
        rows = np.sort(order[start : start + config.batch_size][processes.rank :: processes.world])
        images, labels = gather_batch(train, rows, trainer.device)
        loss_sum += train_step(trainer, images, labels, progress) * len(rows)
        seen += len(rows)
    return sum_over_processes(loss_sum, processes, trainer.device) / len(order), seen


def train_step(
    trainer: Trainer, images: torch.Tensor, labels: torch.Tensor, progress: Progress
) -> float:
    """Augment, forward, backward, optimiser and schedule step, weight average; the loss."""
    config = trainer.config
    if trainer.augment is not None:
        images = trainer.augment(images)
    with autocast(trainer.device):
        loss = F.cross_entropy(trainer.forward(images), labels, weight=trainer.loss_weights,
                               label_smoothing=config.label_smoothing)  # fmt: skip
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), config.grad_clip)
    trainer.optimizer.step()
    progress.step += 1
    trainer.schedule.step(progress.step)
    if trainer.average is not None:
        trainer.average.update(trainer.model, step=progress.step)
    return float(loss.item())


def validate(trainer: Trainer, val: SplitArrays) -> dict[str, float]:
    """Loss and accuracy of the kept weights (the average, when there is one) on ``val``."""
    share_buffers_of_rank_0([trainer.model, trainer.evaluated], trainer.processes)
    loss, accuracy = evaluate_split(trainer.evaluated, val, trainer.config.batch_size,
                                    trainer.device)  # fmt: skip
    return {"val_loss": loss, "val_accuracy": accuracy}


def _result(trainer: Trainer, progress: Progress, train: SplitArrays, rate: float) -> TrainResult:
    """The best epoch's weights in a fresh CPU model."""
    config, mean, std = trainer.config, trainer.mean, trainer.std
    net = create_network(config.model, len(train.classes), train.images.shape[-1])
    final = Classifier(net, mean, std)
    final.load_state_dict({k: v.cpu() for k, v in progress.best_state.items()})
    return TrainResult(final.eval(), _best_epoch(progress.history), mean, std, progress.history,
                       rate, trainer.processes.world)  # fmt: skip


def _place(
    model: Classifier, target: torch.device, compile_model: bool, processes: Processes
) -> tuple[Classifier, Callable[[torch.Tensor], torch.Tensor]]:
    """The model on ``target`` (channels-last on CUDA, which tensor cores want) and the callable
    training steps go through: DistributedDataParallel in a torchrun job (it averages the
    gradients across processes during backward), compiled when asked. The module itself keeps
    the weights."""
    model = model.to(target)
    if target.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    forward: Any = model
    if processes.distributed:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(
            model, device_ids=[target.index] if target.type == "cuda" else None
        )
    if compile_model:
        forward = torch.compile(forward)
    return model, forward


def log_epoch(metric_logger: MetricLogger, record: dict[str, float]) -> None:
    for name, value in record.items():
        if name != "epoch":
            metric_logger.log_metric(name.replace("_", "/", 1), value)
    metric_logger.next_step()


def build_optimizer(
    name: Literal["adamw", "sgd"],
    parameters: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            parameters, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
    assert_never(name)


class Schedule:
    """Per-step learning rate: timm's warm-up + cosine, or torch's one-cycle."""

    def __init__(
        self,
        name: Literal["cosine", "onecycle"],
        optimizer: torch.optim.Optimizer,
        lr: float,
        total: int,
        warmup: int,
    ) -> None:
        self.name = name
        self.scheduler: Any
        if name == "cosine":
            self.scheduler = CosineLRScheduler(
                optimizer, t_initial=total, warmup_t=warmup, warmup_lr_init=lr / 100,
                lr_min=lr / 100, t_in_epochs=False,
            )  # fmt: skip
        elif name == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=lr, total_steps=total, pct_start=max(warmup / total, 0.01),
                div_factor=100, final_div_factor=100,
            )  # fmt: skip
        else:
            assert_never(name)

    def step(self, step: int) -> None:
        if self.name == "cosine":
            self.scheduler.step_update(step)
        elif step < self.scheduler.total_steps:  # OneCycleLR refuses to step past its end
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return dict(self.scheduler.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)


def epoch_order(
    labels: np.ndarray, class_weights: torch.Tensor, balanced: bool, shuffler: torch.Generator
) -> np.ndarray:
    """This epoch's image order: a permutation, or (balanced) as many draws with replacement,
    each class equally likely."""
    if balanced:
        weights = class_weights[torch.from_numpy(labels)]
        return torch.multinomial(weights, len(labels), True, generator=shuffler).numpy()
    return torch.randperm(len(labels), generator=shuffler).numpy()


def class_weights(labels: np.ndarray, classes: int) -> torch.Tensor:
    """1 / class frequency, scaled so that a balanced dataset gets all ones."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _rank(record: dict[str, float]) -> tuple[float, float]:
    return record["val_accuracy"], -record["val_loss"]


def _best_epoch(history: list[dict[str, float]]) -> int:
    return int(max(history, key=_rank)["epoch"])


def _is_better(record: dict[str, float], history: list[dict[str, float]]) -> bool:
    return all(_rank(record) > _rank(other) for other in history[:-1])
