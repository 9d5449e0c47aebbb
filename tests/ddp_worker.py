"""One process of the 2-process DDP test (started by torchrun from tests/test_train.py)."""

import json
import sys
from pathlib import Path

import torch

from imgpipe.train import Augmentation, start_processes, stop_processes, train_classifier
from tests.conftest import make_split

out = Path(sys.argv[1])
processes = start_processes("cpu")
try:
    result = train_classifier(
        make_split(24, seed=1), make_split(8, seed=2),
        architecture="test_resnet", epochs=4, batch_size=8, lr=3e-3, weight_decay=0.05,
        warmup_epochs=1, label_smoothing=0.1, ema_decay=0.9, seed=0,
        augmentation=Augmentation(degrees=5, translate=0.05), device="cpu",
        state_path=out / "state.pt", processes=processes,
    )  # fmt: skip
finally:
    stop_processes(processes)
torch.save(result.model.state_dict(), out / f"rank{processes.rank}.pt")
(out / f"rank{processes.rank}.json").write_text(
    json.dumps({"world": processes.world, "history": result.history})
)
