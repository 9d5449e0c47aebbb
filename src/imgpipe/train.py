"""The ``train`` stage's library: fit a timm classifier on preprocessed uint8 arrays.

Deterministic on CPU for a given seed, machine and thread count: the seed drives the shuffle,
the augmentation and the initial weights, and torch runs in deterministic mode. Batches are
gathered straight from the (memory-mapped) arrays and augmented as uint8 tensors on the
training device, so nothing is decoded during training.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from timm.scheduler.cosine_lr import CosineLRScheduler
from timm.utils.model_ema import ModelEmaV3
from torch import nn

from imgpipe.errors import ImgpipeError
from imgpipe.io import atomic_path
from imgpipe.model import Classifier, channel_statistics, create_network, file_sha256
from imgpipe.preprocess import SplitArrays

log = logging.getLogger(__name__)


class MetricLogger(Protocol):
    """What training needs from a logger: dvclive's ``Live`` fits."""

    def log_metric(self, name: str, val: float) -> None: ...
    def next_step(self) -> None: ...


@dataclass(frozen=True)
class Augmentation:
    """Random geometry drawn per image during training; zeros switch it off."""

    degrees: float = 0.0
    translate: float = 0.0
    scale: float = 0.0
    hflip: bool = False

    def build(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if not (self.degrees or self.translate or self.scale or self.hflip):
            return None
        return BatchRandomAffine(self.degrees, self.translate, self.scale, self.hflip)


class BatchRandomAffine(nn.Module):
    """torchvision's ``v2.RandomAffine`` (rotation, translation, scale about the centre) and
    ``v2.RandomHorizontalFlip``, but with parameters drawn for every image of a batch and the
    whole batch warped in one ``grid_sample`` call, on whatever device the batch is.

    torchvision draws one set of parameters per call, so per-image randomness meant a Python
    loop of one call per image, which halved CPU training throughput on 28x28 digits.
    Expects square ``N x C x H x W`` uint8 batches (what preprocess writes); returns uint8.
    """

    def __init__(self, degrees: float, translate: float, scale: float, hflip: bool) -> None:
        super().__init__()
        self.degrees, self.translate, self.scale, self.hflip = degrees, translate, scale, hflip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        count, device = len(images), images.device

        def uniform(*shape: int) -> torch.Tensor:  # in [-1, 1), from torch's seeded generator
            return torch.rand(*shape, device=device) * 2 - 1

        angle = torch.deg2rad(uniform(count) * self.degrees)
        zoom = 1 + uniform(count) * self.scale
        shift = uniform(count, 2) * self.translate * 2  # grid units: the image spans [-1, 1]
        # affine_grid maps output to input coordinates: the inverse of rotate-scale-shift.
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        inverse = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
        theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(-1))], dim=-1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        warped = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)  # fmt: skip
        if self.hflip:
            flip = torch.rand(count, device=device) < 0.5
            warped = torch.where(flip[:, None, None, None], warped.flip(-1), warped)
        return warped.round_().clamp_(0, 255).to(torch.uint8)


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


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is an error. On CUDA,
    the process with ``local_rank`` n of a torchrun job takes GPU n."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ImgpipeError("device: 'cuda' was asked for but torch sees no CUDA device")
    return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)


@dataclass(frozen=True)
class Processes:
    """Where this process stands in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def start_processes(device: str) -> Processes:
    """Join the torchrun job this process was started by, if any: NCCL on CUDA, gloo on CPU.

    torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them this is a single
    process and nothing is initialised.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes()
    processes = Processes(int(os.environ["RANK"]), world, int(os.environ["LOCAL_RANK"]))
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(processes.local_rank)
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return processes


def relaunch_under_torchrun(count: int, script: str, arguments: list[str]) -> None:
    """Run ``script`` again as ``count`` processes of a single-machine torchrun job and wait.

    Raises:
        ImgpipeError: when a process fails (its own log says why).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    log.info("starting %d training processes (torchrun, DDP)", count)
    try:
        options = parse_args(  # type: ignore[no-untyped-call]
            ["--standalone", f"--nproc-per-node={count}", script, *arguments]
        )
        run(options)  # type: ignore[no-untyped-call]
    except ChildFailedError as error:
        raise ImgpipeError(f"a training process failed: {error}") from None


def stop_processes(processes: Processes) -> None:
    if processes.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


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
    optimizer: str = "adamw",
    schedule: str = "cosine",
    grad_clip: float = 0.0,
    early_stopping: int = 0,
    class_balance: str = "none",
    compile_model: bool = False,
    pretrained: bool | str = False,
    device: str = "auto",
    metric_logger: MetricLogger | None = None,
    state_path: Path | None = None,
    processes: Processes = Processes(),
) -> TrainResult:
    """Train, keeping the best epoch by validation accuracy (then loss).

    Args:
        train: training split.
        val: validation split, evaluated after every epoch.
        architecture: timm model name.
        epochs: passes over the training split.
        batch_size: images per optimiser step.
        lr: peak learning rate, reached after ``warmup_epochs``.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        warmup_epochs: linear warm-up length (may be fractional).
        label_smoothing: cross-entropy label smoothing.
        ema_decay: per-step decay of the weight average that is evaluated and kept; 0 disables.
        seed: drives initial weights, shuffling and augmentation.
        augmentation: random geometry per training image.
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9, Nesterov).
        schedule: ``cosine`` (warm-up, cosine decay to lr/100) or ``onecycle``.
        grad_clip: maximum global gradient norm; 0 disables clipping.
        early_stopping: stop after this many epochs without a better validation score; 0: never.
        class_balance: ``none``, ``loss`` (inverse-frequency class weights) or ``sampler``
            (each epoch draws classes equally often, with replacement).
        compile_model: ``torch.compile`` the training forward pass.
        pretrained: start from timm's hub weights (True) or a local weights file (a path).
        device: ``auto``, ``cpu`` or ``cuda``.
        metric_logger: receives per-epoch metrics (dvclive's ``Live``).
        state_path: where the state after each epoch is kept; a run started with the same
            settings and data continues from it (after a crash or a kill) with the same result
            as an uninterrupted run. The caller deletes it once the model is saved.
        processes: this process's place in a torchrun job (:func:`start_processes`). With
            several, the model is wrapped in DistributedDataParallel and each process takes
            its share of every ``batch_size`` batch (so the optimisation step sees the same
            global batch); rank 0 alone writes the state. Pass ``metric_logger`` on rank 0 only.
    """
    settings = {
        "architecture": architecture, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "warmup_epochs": warmup_epochs,
        "label_smoothing": label_smoothing, "ema_decay": ema_decay, "seed": seed,
        "augmentation": asdict(augmentation), "optimizer": optimizer, "schedule": schedule,
        "grad_clip": grad_clip, "class_balance": class_balance,
        "pretrained": pretrained if isinstance(pretrained, bool) else file_sha256(Path(pretrained)),
        "device": device, "processes": processes.world,
    }  # fmt: skip
    seed_everything(seed)
    target = resolve_device(device, processes.local_rank)
    mean, std = channel_statistics(train.images)
    net = create_network(architecture, len(train.classes), train.images.shape[-1], pretrained)
    model, forward = _place(Classifier(net, mean, std), target, compile_model, processes)
    # Warm-up ramps the decay towards ema_decay, so short runs are not dragged to the init.
    average = ModelEmaV3(model, decay=ema_decay, use_warmup=True) if ema_decay > 0 else None
    evaluated: Classifier = average.module if average else model  # type: ignore[assignment]

    steps_per_epoch = math.ceil(len(train) / batch_size)
    opt = _optimizer(optimizer, model.parameters(), lr, weight_decay)
    scheduler = _Schedule(schedule, opt, lr, epochs * steps_per_epoch,
                          round(warmup_epochs * steps_per_epoch))  # fmt: skip
    class_weights = _class_weights(train.labels, len(train.classes))
    loss_weights = class_weights.to(target) if class_balance == "loss" else None
    augment = augmentation.build()
    shuffler = torch.Generator().manual_seed(seed)
    key = _state_key(settings, train, val)
    saved = _load_state(state_path, key) if state_path is not None else None
    progress = (
        saved.restore(model, opt, scheduler, average, shuffler, rank=processes.rank)
        if saved
        else _Progress()
    )
    if saved:
        log.info("resuming after epoch %d from %s", progress.epoch, state_path)
    if metric_logger is not None:
        for record in progress.history:  # the curves the interrupted run had logged
            _log_epoch(metric_logger, record)
    started, seen = time.perf_counter(), 0
    for epoch in range(progress.epoch + 1, epochs + 1):
        model.train()
        order = _epoch_order(train.labels, class_weights, class_balance == "sampler", shuffler)
        loss_sum = 0.0
        for start in range(0, len(order), batch_size):
            # This process's share of the global batch; sorted: sequential memmap reads.
            rows = np.sort(order[start : start + batch_size][processes.rank :: processes.world])
            images, labels = _batch(train, rows, target)
            if augment is not None:
                images = augment(images)
            with _autocast(target):
                loss = F.cross_entropy(
                    forward(images), labels, weight=loss_weights, label_smoothing=label_smoothing
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            progress.step += 1
            scheduler.step(progress.step)
            if average is not None:
                average.update(model, step=progress.step)
            loss_sum += loss.item() * len(rows)
            seen += len(rows)
        loss_sum = _sum_over_processes(loss_sum, processes, target)
        _share_buffers_of_rank_0([model, evaluated], processes)
        val_loss, val_accuracy = evaluate_split(evaluated, val, batch_size, target)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / len(order),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": opt.param_groups[0]["lr"],
        }
        progress.history.append(record)
        progress.epoch = epoch
        log.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_accuracy %.4f",
            epoch, epochs, record["train_loss"], val_loss, val_accuracy,
        )  # fmt: skip
        if metric_logger is not None:
            _log_epoch(metric_logger, record)
        if _is_better(record, progress.history):
            progress.best_state = copy.deepcopy(evaluated.state_dict())
        if state_path is not None:
            _save_state(state_path, key, progress, model=model, opt=opt, scheduler=scheduler,
                        average=average, shuffler=shuffler, processes=processes)  # fmt: skip
        stale = epoch - max(progress.history, key=_rank)["epoch"]
        if early_stopping and stale >= early_stopping:
            log.info("early stopping: no better validation score for %d epochs", stale)
            break
    elapsed = time.perf_counter() - started
    best_epoch = max(progress.history, key=_rank)["epoch"]
    final = Classifier(
        create_network(architecture, len(train.classes), train.images.shape[-1]), mean, std
    )
    final.load_state_dict({k: v.cpu() for k, v in progress.best_state.items()})
    rate = seen * processes.world / elapsed if seen else 0.0
    return TrainResult(final.eval(), int(best_epoch), mean, std, progress.history, rate)


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


def _sum_over_processes(value: float, processes: Processes, device: torch.device) -> float:
    if not processes.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return float(total.item())


def _share_buffers_of_rank_0(modules: list[nn.Module], processes: Processes) -> None:
    """Batch-norm statistics are updated by each process from its own images, so they drift
    apart between the all-reduced steps; rank 0's are made everyone's before validating."""
    if processes.distributed:
        for module in modules:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, src=0)


def _log_epoch(metric_logger: MetricLogger, record: dict[str, float]) -> None:
    for name, value in record.items():
        if name != "epoch":
            metric_logger.log_metric(name.replace("_", "/", 1), value)
    metric_logger.next_step()


def _optimizer(name: str, parameters: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            parameters, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
    raise ImgpipeError(f"optimizer: expected adamw or sgd, got {name!r}")


class _Schedule:
    """Per-step learning rate: timm's warm-up + cosine, or torch's one-cycle."""

    def __init__(self, name: str, opt: torch.optim.Optimizer, lr: float, total: int,
                 warmup: int) -> None:  # fmt: skip
        self.name = name
        self.scheduler: Any
        if name == "cosine":
            self.scheduler = CosineLRScheduler(
                opt, t_initial=total, warmup_t=warmup, warmup_lr_init=lr / 100,
                lr_min=lr / 100, t_in_epochs=False,
            )  # fmt: skip
        elif name == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=lr, total_steps=total, pct_start=max(warmup / total, 0.01),
                div_factor=100, final_div_factor=100,
            )  # fmt: skip
        else:
            raise ImgpipeError(f"schedule: expected cosine or onecycle, got {name!r}")

    def step(self, step: int) -> None:
        if self.name == "cosine":
            self.scheduler.step_update(step)
        elif step < self.scheduler.total_steps:  # OneCycleLR refuses to step past its end
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return dict(self.scheduler.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def _epoch_order(
    labels: np.ndarray, class_weights: torch.Tensor, balanced: bool, shuffler: torch.Generator
) -> np.ndarray:
    """This epoch's image order: a permutation, or (balanced) as many draws with replacement,
    each class equally likely."""
    if balanced:
        weights = class_weights[torch.from_numpy(labels)]
        return torch.multinomial(weights, len(labels), True, generator=shuffler).numpy()
    return torch.randperm(len(labels), generator=shuffler).numpy()


def _class_weights(labels: np.ndarray, classes: int) -> torch.Tensor:
    """1 / class frequency, scaled so that a balanced dataset gets all ones."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


# --- resuming -------------------------------------------------------------------------------

STATE_FORMAT = 2


@dataclass
class _Progress:
    epoch: int = 0  # last completed epoch
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class _SavedState:
    state: dict[str, Any]

    def restore(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        scheduler: _Schedule,
        average: ModelEmaV3 | None,
        shuffler: torch.Generator,
        *,
        rank: int,
    ) -> _Progress:
        s = self.state
        model.load_state_dict(s["model"])
        opt.load_state_dict(s["optimizer"])
        scheduler.load_state_dict(s["scheduler"])
        if average is not None:
            average.module.load_state_dict(s["average"])
        shuffler.set_state(s["shuffler"])
        torch.set_rng_state(s["torch_rng"][rank])  # augmentation draws differ per process
        if s["cuda_rng"][rank] is not None:
            torch.cuda.set_rng_state(s["cuda_rng"][rank])
        return _Progress(s["epoch"], s["step"], list(s["history"]), s["best_state"])


def _state_key(settings: dict[str, Any], train: SplitArrays, val: SplitArrays) -> str:
    """Settings and data a saved state belongs to: a state of another run is never resumed."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for split in (train, val):
        digest.update(np.ascontiguousarray(split.labels).tobytes())
        digest.update(json.dumps([split.classes, split.files, split.images.shape]).encode())
        sample = split.images[:: max(1, len(split) // 64)]  # a cheap look at the pixels too
        digest.update(np.ascontiguousarray(sample).tobytes())
    return digest.hexdigest()


def _save_state(
    path: Path,
    key: str,
    progress: _Progress,
    *,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scheduler: _Schedule,
    average: ModelEmaV3 | None,
    shuffler: torch.Generator,
    processes: Processes,
) -> None:
    cuda_rng = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    torch_rngs: list[Any] = [torch.get_rng_state()]
    cuda_rngs: list[Any] = [cuda_rng]
    if processes.distributed:  # every process's generators, gathered on all
        torch_rngs, cuda_rngs = [None] * processes.world, [None] * processes.world
        torch.distributed.all_gather_object(torch_rngs, torch.get_rng_state())
        torch.distributed.all_gather_object(cuda_rngs, cuda_rng)
    if processes.rank != 0:
        return
    state = {
        "format": STATE_FORMAT,
        "key": key,
        "epoch": progress.epoch,
        "step": progress.step,
        "history": progress.history,
        "best_state": progress.best_state,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": scheduler.state_dict(),
        "average": average.module.state_dict() if average is not None else None,
        "shuffler": shuffler.get_state(),
        "torch_rng": torch_rngs,
        "cuda_rng": cuda_rngs,
    }
    with atomic_path(path) as temporary:  # a kill mid-write leaves the previous state
        torch.save(state, temporary)


def _load_state(path: Path, key: str) -> _SavedState | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable: start over rather than fail
        log.warning("ignoring unreadable training state %s: %s", path, error)
        return None
    if state.get("format") != STATE_FORMAT or state.get("key") != key:
        log.info("training state %s belongs to other settings or data; starting afresh", path)
        return None
    return _SavedState(state)


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
