"""The ``train`` stage's library: fine-tune a timm classifier on preprocessed uint8 arrays.

Deterministic on CPU for a given seed, machine and thread count: the seed drives the shuffle,
the augmentation and the initial weights, and torch runs in deterministic mode. Batches are
gathered straight from the (memory-mapped) arrays and augmented on the training device, so
nothing is decoded during training.

The pieces, in the order a run uses them: :func:`build_trainer` (network, what of it trains,
optimiser, schedule, weight average, inputs), :func:`~imgpipe.training.resume.resume`, then
per epoch :func:`run_epoch` (:func:`train_one_epoch` of :func:`train_step` calls, then
:func:`validate`) and the state saved; then the kept epoch's weights (``keep_epoch``: the
last, or the best by validation accuracy). ``finetune: head`` trains the
classifier alone on features the frozen backbone computed once
(:mod:`imgpipe.training.feature_cache`); ``full`` trains the network on the images;
``lp-ft`` fits the classifier on those features first (:mod:`imgpipe.training.linear_probe`),
then trains the network on the images from it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, assert_never

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from timm.scheduler.cosine_lr import CosineLRScheduler
from timm.utils.model_ema import ModelEmaV3
from torch import nn
from tqdm import tqdm

from imgpipe.data.splits import SplitArrays
from imgpipe.errors import ImgpipeError
from imgpipe.training.augment import build_augmentation, build_mixing
from imgpipe.training.distributed import Processes, share_buffers_of_rank_0, sum_over_processes
from imgpipe.training.feature_cache import (
    FeatureInputs,
    FrozenBackbone,
    cached_features,
    head_probabilities,
)
from imgpipe.training.inference import (
    autocast,
    autocast_dtype,
    gather_batch,
    loss_and_accuracy,
    predict_split,
    resolve_device,
)
from imgpipe.training.linear_probe import probe_head
from imgpipe.training.model import (
    Classifier,
    channel_statistics,
    check_image_size,
    create_network,
    pretrained_normalisation,
)
from imgpipe.training.resume import Progress, Resumable, resume, save_state, state_key
from imgpipe.training.settings import TrainConfig
from imgpipe.training.transfer import (
    build_optimizer,
    frozen_in_epoch,
    hold_frozen_norms,
    set_frozen,
)

log = logging.getLogger(__name__)


class MetricLogger(Protocol):
    """What training needs from a logger: dvclive's ``Live`` fits."""

    def log_metric(self, name: str, val: float) -> None: ...
    def next_step(self) -> None: ...


class Inputs(Protocol):
    """What an epoch draws batches from: images (``full``) or cached features (``head``)."""

    @property
    def labels(self) -> np.ndarray: ...
    def __len__(self) -> int: ...
    def batch(
        self, rows: np.ndarray, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


Validation = Callable[[nn.Module], torch.Tensor]  # probabilities on the validation split
Augment = Callable[[torch.Tensor], torch.Tensor]  # a batch of images, augmented on the device


@dataclass
class ImageInputs:
    split: SplitArrays

    @property
    def labels(self) -> np.ndarray:
        return self.split.labels

    def __len__(self) -> int:
        return len(self.split)

    def batch(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return gather_batch(self.split, rows, device)


@dataclass
class TrainResult:
    model: Classifier  # weights of the kept epoch (keep_epoch: the last, or the best)
    kept_epoch: int  # 0: lp-ft's linear probe (the kept epoch of fine-tuning validated worse)
    mean: list[float]  # per-channel normalisation the model applies, in [0, 1] units
    std: list[float]
    history: list[dict[str, float]] = field(default_factory=list)
    images_per_second: float = 0.0
    processes: int = 1  # how many processes trained it (torchrun world size)

    @property
    def kept(self) -> dict[str, float]:
        """The kept epoch's record: losses, validation accuracy, peak lr."""
        return next(record for record in self.history if record["epoch"] == self.kept_epoch)


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
    """Seed every generator and ask for deterministic kernels. On the CPU that makes a run
    bit-identical; on CUDA, cuBLAS is deterministic only with a fixed workspace (set here,
    before the first matrix product creates it), and a few ops used (adaptive pooling's
    backward, kornia's histograms) have no deterministic CUDA kernel, hence ``warn_only``:
    GPU reruns agree within the reproduction tolerance, not bit for bit."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
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
    feature_cache: Path | None = None,
    processes: Processes | None = None,
) -> TrainResult:
    """Train; keep the last epoch's weights, or with ``keep_epoch: best`` the epoch's with
    the best validation accuracy (then loss).

    Args:
        train: training split.
        val: validation split, evaluated after every epoch.
        config: every training setting (``params.yaml``'s top-level keys).
        metric_logger: receives per-epoch metrics (dvclive's ``Live``); rank 0 only.
        state_path: where the state after each epoch is kept; a run started with the same
            settings and data continues from it (after a crash or a kill) with the same result
            as an uninterrupted run. The caller deletes it once the model is saved.
        feature_cache: folder of the frozen features ``finetune: head`` trains on (kept across
            runs; None computes them every time).
        processes: this process's place in a torchrun job
            (:func:`~imgpipe.training.distributed.start_processes`); None when alone. With
            several, the model is wrapped in DistributedDataParallel and each process takes its
            share of every ``batch_size`` batch (so the optimisation step sees the same global
            batch); rank 0 alone writes the state.
    """
    processes = processes or Processes()
    trainer = build_trainer(config, train, val, processes, feature_cache)
    key = state_key(config.fingerprint(), train, val)
    progress = resume(state_path, key, trainer.resumable(), processes)
    if config.finetune == "lp-ft" and not progress.history:
        keep_probe(trainer, progress)
    if metric_logger is not None:
        for record in progress.history:  # the curves the interrupted run had logged
            if record["epoch"]:  # lp-ft's probe, epoch 0, trained nothing to plot
                log_epoch(metric_logger, record)
    started, seen = time.perf_counter(), 0
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        record, images = run_epoch(trainer, progress, epoch)
        seen += images
        if metric_logger is not None:
            log_epoch(metric_logger, record)
        if config.keep_epoch == "best" and _is_better(record, progress.history):
            progress.best_state = {
                name: tensor.detach().clone()
                for name, tensor in trainer.evaluated.state_dict().items()
            }
        if state_path is not None:
            save_state(state_path, key, progress, trainer.resumable(), processes)
        stale = epoch - _best_epoch(progress.history)
        if config.early_stopping and stale >= config.early_stopping:
            log.info("early stopping: no better validation score for %d epochs", stale)
            break
    rate = seen * processes.world / (time.perf_counter() - started) if seen else 0.0
    return _result(trainer, progress, rate)


def keep_probe(trainer: Trainer, progress: Progress) -> None:
    """``lp-ft``'s start, the network with its linear probe as the classifier, validated and
    recorded as epoch 0: it is kept only if the kept epoch of fine-tuning (the last, or the
    best) is less accurate on the validation split (:func:`_rank`). On 1,000 photo crops
    (EfficientNet-Lite0) three epochs at lr 1e-4 ended at 0.92 validation accuracy, below the
    probe's 0.98."""
    record = {"epoch": 0, **validate(trainer)}
    progress.history.append(record)
    progress.best_state = {
        name: tensor.detach().clone() for name, tensor in trainer.evaluated.state_dict().items()
    }
    log.info(
        "epoch 0 (the linear probe): val_loss %.4f  val_accuracy %.4f",
        record["val_loss"],
        record["val_accuracy"],
    )


def run_epoch(trainer: Trainer, progress: Progress, epoch: int) -> tuple[dict[str, float], int]:
    """Train one epoch, validate, and add the epoch's record (losses, accuracy, peak lr) to
    ``progress``. Returns the record and the number of images this process trained on."""
    trainer.set_trainable(epoch)
    train_loss, images = train_one_epoch(trainer, progress)
    record = {"epoch": epoch, "train_loss": train_loss, **validate(trainer)}
    record["lr"] = max(group["lr"] for group in trainer.optimizer.param_groups)
    progress.history.append(record)
    progress.epoch = epoch
    log.info(
        "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_accuracy %.4f",
        epoch,
        trainer.config.epochs,
        train_loss,
        record["val_loss"],
        record["val_accuracy"],
    )
    return record, images


@dataclass(kw_only=True)
class Trainer:
    """The moving parts of one training run (built by keyword: several fields share a type)."""

    config: TrainConfig
    processes: Processes
    device: torch.device
    network: Classifier  # the whole model: what is saved and exported
    model: nn.Module  # what is optimised: the network, or its head alone (finetune: head)
    mean: list[float]  # the normalisation the network applies (normalise)
    std: list[float]
    average: WeightAverage | None  # the weight average that is validated and kept
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    train_inputs: Inputs
    validation: Validation
    val_labels: np.ndarray
    augment: Augment | None
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None
    class_weights: torch.Tensor  # 1 / class frequency (class_balance: sampler draws by them)
    loss_weights: torch.Tensor | None  # the same on the device (class_balance: loss)
    shuffler: torch.Generator
    scaler: torch.amp.GradScaler  # fp16 on GPUs without bf16; disabled (a no-op) otherwise
    forward: Callable[[torch.Tensor], Any] = field(init=False)  # model, or its DDP wrapper
    frozen: frozenset[str] | None = field(default=None, init=False)

    @property
    def evaluated(self) -> nn.Module:
        return self.average.module if self.average else self.model  # type: ignore[no-any-return]

    def resumable(self) -> Resumable:
        average = self.average.module if self.average is not None else None
        return Resumable(
            self.model, self.optimizer, self.schedule, average, self.shuffler, self.scaler
        )

    def set_trainable(self, epoch: int) -> None:
        """Freeze what :func:`~imgpipe.training.transfer.frozen_in_epoch` keeps fixed this epoch;
        the training wrapper (DDP, compile) is built anew when that changes."""
        config = self.config
        frozen = frozen_in_epoch(
            self.network.net,
            epoch,
            finetune=config.finetune,
            freeze=config.freeze,
            freeze_epochs=config.freeze_epochs,
        )
        if frozen == self.frozen:
            return
        set_frozen(self.model if config.finetune == "head" else self.network.net, set(frozen))
        self.forward = _wrap(self.model, self.device, config.compile, self.processes)
        if self.frozen is not None:
            log.info("epoch %d: %d parameter tensors frozen", epoch, len(frozen))
        self.frozen = frozen


def build_trainer(
    config: TrainConfig,
    train: SplitArrays,
    val: SplitArrays,
    processes: Processes,
    feature_cache: Path | None = None,
) -> Trainer:
    """Seed, then create the network (behind the normalisation ``normalise`` names), what
    of it trains, its weight average, optimiser, schedule and inputs. The order is fixed: it
    decides which random numbers initialise the weights."""
    device = resolve_device(config.device, processes.local_rank)
    network, mean, std = build_network(config, train, device)
    channels, classes = train.images.shape[-1], len(train.classes)
    model, train_inputs, validation, augment = _what_trains(
        network,
        train,
        val,
        config,
        augment=build_augmentation(config.augment, channels),
        device=device,
        feature_cache=feature_cache,
        processes=processes,
    )
    # Warm-up ramps the decay towards ema_decay, so short runs are not dragged to the init.
    average = (
        WeightAverage(model, decay=config.ema_decay, use_warmup=True)
        if config.ema_decay > 0
        else None
    )
    if processes.rank:  # the other processes draw their own augmentation (rank 0 keeps seed)
        torch.manual_seed(config.seed + processes.rank)
    optimizer, schedule = _optimizer_and_schedule(config, model, len(train), processes)
    weights = class_weights(train.labels, classes)
    return Trainer(
        config=config,
        processes=processes,
        device=device,
        network=network,
        model=model,
        mean=mean,
        std=std,
        average=average,
        optimizer=optimizer,
        schedule=schedule,
        train_inputs=train_inputs,
        validation=validation,
        val_labels=val.labels,
        augment=augment,
        mix=build_mixing(config.mixup, config.cutmix, classes),
        class_weights=weights,
        loss_weights=weights.to(device) if config.class_balance == "loss" else None,
        shuffler=torch.Generator().manual_seed(config.seed),
        scaler=torch.amp.GradScaler(device.type, enabled=autocast_dtype(device) == torch.float16),
    )


def build_network(
    config: TrainConfig, train: SplitArrays, device: torch.device
) -> tuple[Classifier, list[float], list[float]]:
    """Seed, then the network on ``device``, normalised by the per-channel mean and std
    (returned too) that ``normalise`` names: with ``auto`` a pretrained network's own, otherwise
    the training images'. The audit builds its frozen backbone here as well: the feature cache
    it shares with ``finetune: head`` is only right if both build it alike."""
    seed_everything(config.seed)
    channels, classes = train.images.shape[-1], len(train.classes)
    net = create_network(config.model, classes, channels, config.pretrained, config.drop_path)
    check_image_size(net, config.model, channels, train.images.shape[1])
    if config.pretrained and config.normalise == "auto":
        mean, std = pretrained_normalisation(net, channels)
    else:
        mean, std = channel_statistics(train.images)
    network = Classifier(net, mean, std).to(device)
    if device.type == "cuda":  # tensor cores want channels-last
        network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return network, mean, std


def _what_trains(
    network: Classifier,
    train: SplitArrays,
    val: SplitArrays,
    config: TrainConfig,
    *,
    augment: Augment | None,
    device: torch.device,
    feature_cache: Path | None,
    processes: Processes,
) -> tuple[nn.Module, Inputs, Validation, Augment | None]:
    """What the optimiser trains, the inputs it trains on, how it is validated, and the
    augmentation applied to each batch. ``full``: the whole network on the images.
    ``finetune: head``: the classifier alone on the features the frozen backbone computes once
    (of augmented views of each image, so no batch is augmented again). ``lp-ft``: the
    whole network on the images, its classifier first fitted on the unaugmented features."""
    if config.finetune == "lp-ft":
        # One unaugmented view: the same cache entry as finetune: head with feature_views 1.
        views, val_features = cached_features(
            FrozenBackbone(network, device, feature_cache),
            train,
            val,
            config.replace(feature_views=1),
            augment=None,
            device=device,
            cache=feature_cache,
            processes=processes,
        )
        head = network.net.get_classifier()
        probe_head(head, views[0], train.labels, val_features, val.labels, seed=config.seed)
    if config.finetune != "head":
        if device.type == "cpu":  # oneDNN's CPU convolutions: 1.5-1.7x faster channels-last
            # After the frozen features above: their ONNX graph is exported from the network
            # as built, so the cache entry they share with finetune: head stays the same.
            network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

        def on_images(module: nn.Module) -> torch.Tensor:
            return predict_split(module, val, config.batch_size, device)  # type: ignore[arg-type]

        return network, ImageInputs(train), on_images, augment
    views, val_features = cached_features(
        FrozenBackbone(network, device, feature_cache),
        train,
        val,
        config,
        augment=augment,
        device=device,
        cache=feature_cache,
        processes=processes,
    )
    inputs = FeatureInputs(views, train.labels, torch.Generator().manual_seed(config.seed))

    def on_features(module: nn.Module) -> torch.Tensor:
        return head_probabilities(module, val_features, config.batch_size, device)

    return network.net.get_classifier(), inputs, on_features, None


class WeightAverage(ModelEmaV3):  # type: ignore[misc]
    """timm's ModelEmaV3, with the tensors it blends each step looked up once.

    timm walks both models' state dicts on every update: three quarters of the average's cost and
    about 2% of a digits training step on a CPU. The lists hold the parameter and buffer
    objects themselves, so an in-place load (resume) or a ``.data`` swap keeps them current.
    """

    def __init__(self, model: nn.Module, **settings: Any) -> None:
        super().__init__(model, **settings)
        self._blended: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]] | None = None
        self._copied: list[tuple[torch.Tensor, torch.Tensor]] = []

    def apply_update_(self, model: nn.Module, decay: float) -> None:
        if not self.foreach:
            super().apply_update_(model, decay)
            return
        if self._blended is None or self._blended[0] is not model:
            pairs = list(
                zip(
                    self.module.state_dict(keep_vars=True).values(),
                    model.state_dict(keep_vars=True).values(),
                    strict=True,
                )
            )
            floats = [(e, m) for e, m in pairs if e.is_floating_point()]
            self._blended = (model, [e for e, _ in floats], [m for _, m in floats])
            self._copied = [(e, m) for e, m in pairs if not e.is_floating_point()]
        _, averaged, current = self._blended
        for averaged_tensor, current_tensor in self._copied:
            averaged_tensor.copy_(current_tensor)
        self._foreach_lerp_(averaged, current, weight=1.0 - decay)


def _optimizer_and_schedule(
    config: TrainConfig, model: nn.Module, train_images: int, processes: Processes
) -> tuple[torch.optim.Optimizer, Schedule]:
    """The optimiser over what trains (layer-wise lr decay unless ``finetune: head``) and its
    per-step schedule over all epochs."""
    optimizer = build_optimizer(
        model.net if isinstance(model, Classifier) else model,
        config.optimizer,
        config.lr,
        config.weight_decay,
        config.layer_decay if config.finetune != "head" else 0.0,
    )
    steps_per_epoch = len(global_batches(np.arange(train_images), config.batch_size, processes))
    schedule = Schedule(
        config.schedule,
        optimizer,
        config.lr,
        config.epochs * steps_per_epoch,
        round(config.warmup_epochs * steps_per_epoch),
    )
    return optimizer, schedule


def train_one_epoch(trainer: Trainer, progress: Progress) -> tuple[float, int]:
    """One pass over the training inputs: mean loss (over all processes) and the number of
    images this process trained on."""
    config, processes, inputs = trainer.config, trainer.processes, trainer.train_inputs
    trainer.model.train()
    hold_frozen_norms(trainer.model)
    order = epoch_order(
        inputs.labels, trainer.class_weights, config.class_balance == "sampler", trainer.shuffler
    )
    batches = global_batches(order, config.batch_size, processes)
    loss_sum, seen = 0.0, 0
    # A bar within the epoch (a 224 px epoch on a laptop CPU takes minutes): on a terminal only
    # (None: tqdm's own check), rank 0 only, and not where the epoch lines are silenced.
    quiet = processes.rank != 0 or not log.isEnabledFor(logging.INFO)
    epoch = f"epoch {progress.epoch + 1}/{config.epochs}"
    for batch in tqdm(
        batches, desc=epoch, unit="batch", leave=False, disable=True if quiet else None
    ):
        # This process's share of the global batch; sorted: sequential memmap reads.
        rows = np.sort(batch[processes.rank :: processes.world])
        loss_sum += train_step(trainer, rows, progress) * len(rows)
        seen += len(rows)
    trained = sum(len(batch) for batch in batches)
    return sum_over_processes(loss_sum, processes, trainer.device) / trained, seen


def global_batches(order: np.ndarray, batch_size: int, processes: Processes) -> list[np.ndarray]:
    """The epoch's optimiser steps: ``order`` cut into ``batch_size`` batches, each shared out
    over the processes. A last batch too small to give every process two images is dropped
    (unless it is the only one): a process with none would divide by zero while the others
    wait in all-reduce, and batch norm cannot train on one image."""
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2 * processes.world:
        batches.pop()
    return batches


def train_step(trainer: Trainer, rows: np.ndarray, progress: Progress) -> float:
    """One optimiser step on ``rows``, in ``accumulate`` parts one after another (the same
    step with a fraction of the memory): augment and mix, forward, backward; then clip, step
    the optimiser, the schedule and the weight average. Returns the mean loss."""
    config = trainer.config
    parts = [part for part in np.array_split(rows, config.accumulate) if len(part)]
    trainer.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for index, part in enumerate(parts):
        inputs, labels = trainer.train_inputs.batch(part, trainer.device)
        if trainer.augment is not None:
            inputs = trainer.augment(inputs)
        targets: torch.Tensor = labels
        if trainer.mix is not None:
            inputs, targets = trainer.mix(inputs, labels)
        last = index == len(parts) - 1
        syncing = contextlib.nullcontext() if last else _no_sync(trainer.forward)
        with syncing:
            with autocast(trainer.device):
                loss = F.cross_entropy(
                    trainer.forward(inputs),
                    targets,
                    weight=trainer.loss_weights,
                    label_smoothing=config.label_smoothing,
                )
            trainer.scaler.scale(loss * len(part) / len(rows)).backward()  # type: ignore[no-untyped-call]
        total += float(loss.item()) * len(part)
    if config.grad_clip > 0:
        trainer.scaler.unscale_(trainer.optimizer)  # clip the true gradients
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), config.grad_clip)
    trainer.scaler.step(trainer.optimizer)  # skipped when fp16 gradients overflowed
    trainer.scaler.update()
    progress.step += 1
    trainer.schedule.step(progress.step)
    if trainer.average is not None:
        trainer.average.update(trainer.model, step=progress.step)
    return total / len(rows)


def validate(trainer: Trainer) -> dict[str, float]:
    """Loss and accuracy of the kept weights (the average, when there is one) on the
    validation split."""
    share_buffers_of_rank_0([trainer.model, trainer.evaluated], trainer.processes)
    probabilities = trainer.validation(trainer.evaluated)
    loss, accuracy = loss_and_accuracy(probabilities, trainer.val_labels)
    return {"val_loss": loss, "val_accuracy": accuracy}


def _result(trainer: Trainer, progress: Progress, rate: float) -> TrainResult:
    """The kept epoch's weights in a CPU copy of the whole network."""
    kept_epoch = _kept_epoch(progress.history, trainer.config.keep_epoch)
    if trainer.config.keep_epoch == "best" or kept_epoch == 0:
        state = progress.best_state
    else:  # the last epoch's: what is validated now
        state = trainer.evaluated.state_dict()
    final = copy.deepcopy(trainer.network).cpu()
    kept = {k: v.detach().cpu() for k, v in state.items()}
    if trainer.config.finetune == "head":
        final.net.get_classifier().load_state_dict(kept)
    else:
        final.load_state_dict(kept)
    final.requires_grad_(True)
    return TrainResult(
        final.eval(),
        kept_epoch,
        trainer.mean,
        trainer.std,
        progress.history,
        rate,
        trainer.processes.world,
    )


def _wrap(
    model: nn.Module, device: torch.device, compile_model: bool, processes: Processes
) -> Callable[[torch.Tensor], Any]:
    """What training steps call: DistributedDataParallel in a torchrun job (it averages the
    gradients across processes during backward; built anew when what trains changes), compiled
    when asked. The module itself keeps the weights."""
    forward: Any = model
    if processes.distributed:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if compile_model:
        forward = torch.compile(forward)
    return forward  # type: ignore[no-any-return]


def _no_sync(forward: Any) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync`` (gradients of all but an optimiser step's last part stay local)."""
    module = getattr(forward, "_orig_mod", forward)  # a compiled wrapper keeps the original
    return module.no_sync() if hasattr(module, "no_sync") else contextlib.nullcontext()


def log_epoch(metric_logger: MetricLogger, record: dict[str, float]) -> None:
    for name, value in record.items():
        if name != "epoch":
            metric_logger.log_metric(name.replace("_", "/", 1), value)
    metric_logger.next_step()


class Schedule:
    """Per-step learning rate: timm's warm-up + cosine, or torch's one-cycle. Both keep the
    per-group scale that layer-wise lr decay sets (timm's ``lr_scale``)."""

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
                optimizer,
                t_initial=total,
                warmup_t=warmup,
                warmup_lr_init=lr / 100,
                lr_min=lr / 100,
                t_in_epochs=False,
            )
        elif name == "onecycle":
            peaks = [lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=peaks,
                total_steps=total,
                pct_start=max(warmup / total, 0.01),
                div_factor=100,
                final_div_factor=100,
            )
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
    # lp-ft's probe (epoch 0) wins on accuracy alone: fitted to convergence without label
    # smoothing, its validation loss is lower than fine-tuning's at the same accuracy.
    tie_break = -math.inf if record["epoch"] == 0 else -record["val_loss"]
    return record["val_accuracy"], tie_break


def _best_epoch(history: list[dict[str, float]]) -> int:
    return int(max(history, key=_rank)["epoch"])


def _kept_epoch(history: list[dict[str, float]], keep: str) -> int:
    """The best epoch, or the last one unless lp-ft's probe (epoch 0) validated better."""
    if keep == "best":
        return _best_epoch(history)
    last = history[-1]
    probe = [record for record in history if record["epoch"] == 0]
    return 0 if probe and _rank(probe[0]) > _rank(last) else int(last["epoch"])


def _is_better(record: dict[str, float], history: list[dict[str, float]]) -> bool:
    return all(_rank(record) > _rank(other) for other in history[:-1])
