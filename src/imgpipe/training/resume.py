"""The training state kept after every epoch, so that a run that was killed continues where it
was and ends with the same model, bit for bit, as an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from imgpipe.data.splits import SplitArrays
from imgpipe.io import atomic_path
from imgpipe.training.distributed import Processes, gather_from_processes

log = logging.getLogger(__name__)

STATE_FORMAT = 4  # 4: the fp16 gradient scaler's state


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


@dataclass
class Progress:
    """How far a run got: what the next epoch continues from."""

    epoch: int = 0  # last completed epoch
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Resumable:
    """The parts of a training run whose state is saved and restored."""

    model: nn.Module
    optimizer: Stateful
    schedule: Stateful
    average: nn.Module | None  # the averaged weights, when kept
    shuffler: torch.Generator
    scaler: Stateful  # fp16's gradient scaler (a no-op, with an empty state, otherwise)


def state_key(fingerprint: str, train: SplitArrays, val: SplitArrays) -> str:
    """The training settings' fingerprint and the data a saved state belongs to: a state of
    another run is never resumed."""
    digest = hashlib.sha256(fingerprint.encode())
    for split in (train, val):
        digest.update(np.ascontiguousarray(split.labels).tobytes())
        digest.update(json.dumps([split.classes, split.files, split.images.shape]).encode())
        sample = split.images[:: max(1, len(split) // 64)]  # a cheap look at the pixels too
        digest.update(np.ascontiguousarray(sample).tobytes())
    return digest.hexdigest()


def save_state(
    path: Path, key: str, progress: Progress, parts: Resumable, processes: Processes
) -> None:
    """Write the state after an epoch, with every process's random generators (each draws its
    own augmentation). The first process of each machine writes it, so that nodes without a
    shared filesystem each find it when the job restarts. Atomic: a kill mid-write keeps the
    previous one."""
    cuda_rng = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    torch_rngs = gather_from_processes(torch.get_rng_state(), processes)
    cuda_rngs = gather_from_processes(cuda_rng, processes)
    if processes.local_rank != 0:
        return
    state = {
        "format": STATE_FORMAT,
        "key": key,
        "epoch": progress.epoch,
        "step": progress.step,
        "history": progress.history,
        "best_state": progress.best_state,
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "schedule": parts.schedule.state_dict(),
        "average": parts.average.state_dict() if parts.average is not None else None,
        "shuffler": parts.shuffler.get_state(),
        "scaler": parts.scaler.state_dict(),
        "torch_rng": torch_rngs,
        "cuda_rng": cuda_rngs,
    }
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def resume(path: Path | None, key: str, parts: Resumable, processes: Processes) -> Progress:
    """Restore ``parts`` from the state at ``path`` when it belongs to this run (same ``key``);
    otherwise leave them as they are and start from nothing. Every process of a job reads its
    own machine's copy; unless all found the same epoch (a node's disk was replaced, say),
    all start afresh: a process continuing alone would wait forever for the others."""
    state = _load(path, key) if path is not None else None
    epochs = gather_from_processes(state["epoch"] if state else 0, processes)
    if len(set(epochs)) > 1:
        log.warning(
            "the training processes found different saved states (epochs %s by rank): "
            "starting afresh on all",
            epochs,
        )
        return Progress()
    if state is None:
        return Progress()
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.schedule.load_state_dict(state["schedule"])
    if parts.average is not None:
        parts.average.load_state_dict(state["average"])
    parts.shuffler.set_state(state["shuffler"])
    parts.scaler.load_state_dict(state["scaler"])
    rank = processes.rank
    torch.set_rng_state(state["torch_rng"][rank])  # augmentation draws differ per process
    if state["cuda_rng"][rank] is not None:
        torch.cuda.set_rng_state(state["cuda_rng"][rank])
    log.info("resuming after epoch %d from %s", state["epoch"], path)
    return Progress(state["epoch"], state["step"], list(state["history"]), state["best_state"])


def _load(path: Path, key: str) -> dict[str, Any] | None:
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
    return dict(state)
