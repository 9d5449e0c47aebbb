"""One process of the 2-process DDP tests (started by torchrun from tests/test_train.py).

ddp_worker.py OUT            train 4 epochs; write rank<N>.pt and rank<N>.json to OUT
ddp_worker.py OUT crash      the same, but every process fails when epoch 3 ends (the
                             state after epoch 2 stays in OUT/state.pt)
"""

import json
import logging
import sys
from pathlib import Path

import torch

from imgpipe.distributed import start_processes, stop_processes
from imgpipe.train import train_classifier
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


logging.basicConfig(level=logging.INFO)
out = Path(sys.argv[1])
crash = sys.argv[2:] == ["crash"]
processes = start_processes("cpu")
try:
    result = train_classifier(
        make_split(24, seed=1),
        make_split(8, seed=2),
        train_config(),
        metric_logger=CrashAtEpoch3() if crash else None,
        state_path=out / "state.pt",
        processes=processes,
    )
finally:
    stop_processes(processes)
torch.save(result.model.state_dict(), out / f"rank{processes.rank}.pt")
(out / f"rank{processes.rank}.json").write_text(
    json.dumps({"world": processes.world, "history": result.history})
)
