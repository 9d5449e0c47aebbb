"""Which git commit a served model was built from."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import yaml


def model_commit(model: Path) -> str | None:
    """The git commit the model was built from, when it can be known.

    ``IMGPIPE_MODEL_COMMIT`` wins (set it in images and deployments). Otherwise, inside a
    checkout whose ``dvc.lock`` records this very file (same md5), it is that checkout's HEAD.
    """
    if commit := os.environ.get("IMGPIPE_MODEL_COMMIT"):
        return commit
    model = model.resolve()
    for root in model.parents:
        lock = root / "dvc.lock"
        if lock.is_file():
            break
    else:
        return None
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        recorded = {
            (root / out["path"]).resolve(): out.get("md5")
            for stage in stages.values()
            for out in stage.get("outs", [])
        }
        if recorded.get(model) != hashlib.md5(model.read_bytes()).hexdigest():
            return None
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, yaml.YAMLError, subprocess.CalledProcessError, AttributeError):
        return None
    return head.stdout.strip() or None
