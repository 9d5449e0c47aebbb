"""Where the feature cache keeps a split's frozen-backbone features, computed without torch.

An entry is named by everything that shapes the features: the fields that describe the
backbone and what ran it (written by :class:`imgpipe.training.feature_cache.FrozenBackbone`,
which fills the cache) plus the split's shape and every pixel. The drift-baseline stage looks
entries up with the same function, from the fields export-onnx recorded, so that it reads the
features the pipeline already computed instead of running the backbone again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

# 2: keyed by device type and autocast precision too; 3: and the engine; 4: a split's
# unaugmented features in an entry of their own, the training entry holds the augmented views;
# 5: the backbone's fingerprint covers its architecture too
CACHE_FORMAT = 5
PIXEL_BLOCK = 4096  # images hashed per update: a bounded copy of a strided array
# The metadata key of a classifier head's graph that names the fields of its backbone's entries.
FIELDS_KEY = "imgpipe_feature_fields"


def entry_fields(backbone: str, device: str, precision: str, engine: str) -> dict[str, Any]:
    """The fields of a key other than the images: the backbone's fingerprint (its weights,
    architecture and normalisation), the device type, autocast precision and engine that
    computed the features."""
    return {
        "format": CACHE_FORMAT,
        "backbone": backbone,
        "device": device,
        "precision": precision,
        "engine": engine,
    }


def onnxruntime_cpu_fields(backbone: str) -> dict[str, Any]:
    """The fields of features onnxruntime computed on the CPU in full precision, the only
    ones an exported model's embedding reproduces bit for bit."""
    return entry_fields(backbone, "cpu", "None", "onnxruntime")


def entry_key(fields: dict[str, Any], images: np.ndarray) -> str:
    """The key of the features of ``images`` (``N x H x W x C`` uint8) under ``fields``."""
    shaping = {**fields, "shape": list(images.shape)}
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode())
    digest_pixels(digest, images)
    return digest.hexdigest()[:32]


def split_entry(cache: Path, fields: dict[str, Any], images: np.ndarray) -> Path:
    """The file in ``cache`` that holds (or would hold) the features of ``images``."""
    return cache / f"split-{entry_key(fields, images)}.npz"


def digest_pixels(digest: Any, images: np.ndarray) -> None:
    """Every pixel of ``images`` into ``digest``: a cache keyed by less would go stale. The
    hash reads each block's buffer in place (``tobytes`` would copy it first: 0.96 s against
    0.49 s for 4,000 photos at 224 px), so the digest is the same."""
    for start in range(0, len(images), PIXEL_BLOCK):
        digest.update(np.ascontiguousarray(images[start : start + PIXEL_BLOCK]))


def head_entry(cache: Path, model_sha256: str) -> Path:
    """The file in ``cache`` that holds the classifier part (embedding to calibrated logits) of
    the exported model whose file has sha256 ``model_sha256``, with the fields of its
    backbone's entries in its metadata under :data:`FIELDS_KEY`."""
    return cache / f"head-{model_sha256[:32]}.onnx"
