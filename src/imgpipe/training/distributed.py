"""Several training processes (torchrun, DistributedDataParallel): joining the job, relaunching
the stage under torchrun, and the few collective operations the training loop needs."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from imgpipe.errors import ImgpipeError
from imgpipe.training.inference import resolve_device

log = logging.getLogger(__name__)

# NCCL aborts a collective after 10 minutes by default; the other processes wait at a barrier
# while each node's first process fills the feature cache or the first epoch compiles.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


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

    Raises:
        ImgpipeError: a launcher set ``WORLD_SIZE`` without the other two, or this process's
            ``LOCAL_RANK`` has no GPU of its own on this machine.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes()
    missing = [name for name in ("RANK", "LOCAL_RANK") if name not in os.environ]
    if missing:
        raise ImgpipeError(
            f"WORLD_SIZE is {world} but {' and '.join(missing)} is not set: start training "
            "processes with torchrun (it sets all three), or set them the way torchrun does"
        )
    processes = Processes(int(os.environ["RANK"]), world, int(os.environ["LOCAL_RANK"]))
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        check_gpus_for(processes.local_rank + 1)
        torch.cuda.set_device(processes.local_rank)
    torch.distributed.init_process_group(
        "nccl" if cuda else "gloo",
        timeout=COLLECTIVE_TIMEOUT,
        device_id=torch.device("cuda", processes.local_rank) if cuda else None,
    )
    return processes


def check_gpus_for(count: int) -> None:
    """One GPU per training process on a machine: refuse more processes than GPUs in words
    rather than CUDA's "invalid device ordinal"."""
    available = torch.cuda.device_count()
    if count > available:
        raise ImgpipeError(
            f"{count} training processes on this machine need {count} GPUs, but torch sees "
            f"{available}: set `processes` (or torchrun's --nproc-per-node) to at most {available}"
        )


def relaunch_under_torchrun(count: int, device: str, script: str, arguments: list[str]) -> None:
    """Run ``script`` again as ``count`` processes of a single-machine torchrun job and wait.

    Raises:
        ImgpipeError: when a process fails (its own log says why), or on CUDA when the machine
            has fewer GPUs than ``count``.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if resolve_device(device).type == "cuda":
        check_gpus_for(count)

    log.info("starting %d training processes (torchrun, DDP)", count)
    # torchrun's own bookkeeping goes to a folder removed afterwards: left to itself it makes
    # a /tmp/torchelastic_* folder per run and never removes it (the processes' output still
    # comes to the console).
    with tempfile.TemporaryDirectory(prefix="imgpipe-torchrun-") as bookkeeping:
        try:
            options = parse_args(  # type: ignore[no-untyped-call]
                [
                    "--standalone",
                    f"--nproc-per-node={count}",
                    f"--log-dir={bookkeeping}",
                    script,
                    *arguments,
                ]
            )
            run(options)  # type: ignore[no-untyped-call]
        except ChildFailedError as error:
            raise ImgpipeError(f"a training process failed: {error}") from None


def stop_processes(processes: Processes) -> None:
    if processes.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def sum_over_processes(value: float, processes: Processes, device: torch.device) -> float:
    if not processes.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return float(total.item())


def share_buffers_of_rank_0(modules: list[nn.Module], processes: Processes) -> None:
    """Batch-norm statistics are updated by each process from its own images, so they drift
    apart between the all-reduced steps; rank 0's are made everyone's before validating."""
    if processes.distributed:
        for module in modules:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, src=0)


def wait_for_every_process(processes: Processes) -> None:
    """Every process waits here until all have arrived (a barrier)."""
    if processes.distributed:
        torch.distributed.barrier()


def gather_from_processes(value: Any, processes: Processes) -> list[Any]:
    """``value`` of every process, in rank order (just ``[value]`` when alone)."""
    if not processes.distributed:
        return [value]
    gathered: list[Any] = [None] * processes.world
    torch.distributed.all_gather_object(gathered, value)
    return gathered
