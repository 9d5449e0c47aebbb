"""One process of the 2-process DDP test (started by torchrun from tests/test_train.py)."""

import json
import sys
from pathlib import Path

import torch

from imgpipe.distributed import start_processes, stop_processes
from imgpipe.train import train_classifier
from tests.conftest import make_split, train_config

out = Path(sys.argv[1])
processes = start_processes("cpu")
try:
    result = train_classifier(
        make_split(24, seed=1),
        make_split(8, seed=2),
        train_config(),
        state_path=out / "state.pt",
        processes=processes,
    )
finally:
    stop_processes(processes)
torch.save(result.model.state_dict(), out / f"rank{processes.rank}.pt")
(out / f"rank{processes.rank}.json").write_text(
    json.dumps({"world": processes.world, "history": result.history})
)
