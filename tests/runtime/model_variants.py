"""Copies of an exported model with their metadata changed, the way the export stage writes a
model with an operating point (or a broken one would look)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from imgpipe.runtime.onnx_contract import METADATA_KEY

POSITIVE_CLASS = "right"  # of the tiny model's classes, left and right


def with_metadata(model: Path, destination: Path, **changes: object) -> Path:
    """``model`` saved as ``destination``, ``changes`` merged into its imgpipe metadata."""
    proto = onnx.load_model(model)
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    entry.value = json.dumps(json.loads(entry.value) | changes, sort_keys=True)
    onnx.save_model(proto, destination)
    return destination


def with_operating_point(model: Path, destination: Path, threshold: float) -> Path:
    """``model`` with the operating point export writes: screening for ``POSITIVE_CLASS``."""
    point = {
        "positive_class": POSITIVE_CLASS,
        "threshold": threshold,
        "target": "sensitivity",
        "target_value": 0.95,
    }
    return with_metadata(model, destination, operating_point=point, temperature=1.0)


def threshold_between(positive: np.ndarray, below: int) -> float:
    """Halfway between the ``below``-th and next smallest positive probabilities, so that
    exactly ``below`` images fall under it, none of them near it."""
    ordered = np.sort(positive)
    assert ordered[below] - ordered[below - 1] > 1e-5, "images too close to tell apart"
    return float((ordered[below - 1] + ordered[below]) / 2)
