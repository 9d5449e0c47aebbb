"""Which git commit a served model was built from."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import yaml


def model_commit(model: Path) -> str | None:
    """The git commit the model was built from, when it can be known.

    ``IMGPIPE_MODEL_COMMIT`` wins (set it in images and deployments). Otherwise, inside a
    checkout whose ``dvc.lock`` records this very file (same md5), it is that checkout's HEAD:
    an output of its own (``models/model.onnx``) or a file in a folder output
    (``models/int8/model.onnx``), whose list of files DVC keeps in the checkout's cache.
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
        outs = [out for stage in stages.values() for out in stage.get("outs", [])]
        recorded = _recorded_md5(root, outs, model)
        if recorded is None or recorded != hashlib.md5(model.read_bytes()).hexdigest():
            return None
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, ValueError, yaml.YAMLError, subprocess.CalledProcessError, AttributeError):
        return None
    return head.stdout.strip() or None


def _recorded_md5(root: Path, outs: list[dict[str, str]], model: Path) -> str | None:
    """The md5 ``dvc.lock`` records for ``model``, itself an output or inside a folder output."""
    for out in outs:
        path, md5 = (root / out["path"]).resolve(), out.get("md5")
        if path == model:
            return md5
        if md5 and md5.endswith(".dir") and model.is_relative_to(path):
            relpath = model.relative_to(path).as_posix()
            entries = _folder_manifest(root, md5)
            return next((e.get("md5") for e in entries if e.get("relpath") == relpath), None)
    return None


def _folder_manifest(root: Path, md5: str) -> list[dict[str, str]]:
    """DVC's list of a folder output's files (``[{"md5", "relpath"}, ...]``), from the checkout's
    cache (DVC 3's layout, then DVC 2's); empty when the cache does not hold it."""
    cache = root / ".dvc" / "cache"
    for manifest in (cache / "files" / "md5" / md5[:2] / md5[2:], cache / md5[:2] / md5[2:]):
        if manifest.is_file():
            entries = json.loads(manifest.read_text())
            return entries if isinstance(entries, list) else []
    return []
