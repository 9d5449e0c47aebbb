"""One process of the DDP tests (started by torchrun from tests/training/test_distributed.py).

ddp_worker.py OUT [crash] [head] [images=N]

Trains 4 epochs on the pattern images and writes rank<N>.pt and rank<N>.json to OUT, the
training state to OUT/state.pt and (head) the feature cache to OUT/features. Each "node" of a
multi-node test gets its own OUT, as machines without a shared filesystem would.

crash      every process fails when epoch 3 ends (the state after epoch 2 stays in OUT)
head       finetune: head on the cached frozen features
images=N   train on the first N of the 48 training images (a short last global batch)
"""

import json
import logging
import sys
from pathlib import Path

import torch

from imgpipe.data.splits import SplitArrays
from imgpipe.training.distributed import start_processes, stop_processes
from imgpipe.training.loop import train_classifier
from tests.conftest import make_split, train_config


class CrashAtEpoch3:
    """Fails as epoch 3's metrics arrive, before its state is saved (on every process)."""

    epochs = 0

    def log_metric(self, name: str, val: float) -> None:
        pass

    def next_step(self) -> None:
        self.epochs += 1
        if self.epochs == 3:
            raise SystemExit(3)


def first(split: SplitArrays, count: int) -> SplitArrays:
    return SplitArrays(
        split.images[:count], split.labels[:count], split.classes, split.files[:count]
    )


logging.basicConfig(level=logging.INFO)
out, options = Path(sys.argv[1]), sys.argv[2:]
sizes = [int(option.split("=", 1)[1]) for option in options if option.startswith("images=")]
train = make_split(24, seed=1)
if sizes:
    train = first(train, sizes[0])
config = train_config(finetune="head", lr=0.05) if "head" in options else train_config()
processes = start_processes("cpu")
try:
    result = train_classifier(
        train,
        make_split(8, seed=2),
        config,
        metric_logger=CrashAtEpoch3() if "crash" in options else None,
        state_path=out / "state.pt",
        feature_cache=out / "features" if "head" in options else None,
        processes=processes,
    )
finally:
    stop_processes(processes)
torch.save(result.model.state_dict(), out / f"rank{processes.rank}.pt")
(out / f"rank{processes.rank}.json").write_text(
    json.dumps({"world": processes.world, "history": result.history})
)
