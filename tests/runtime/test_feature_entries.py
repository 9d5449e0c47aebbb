"""A feature-cache entry is keyed by every pixel: the key must not depend on how the array
lies in memory, nor change between versions that hash it differently (earlier entries stay
valid)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from imgpipe.runtime import feature_entries
from imgpipe.runtime.feature_entries import entry_fields, entry_key


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (10, 6, 5, 3), dtype=np.uint8)


def _key_from_bytes(fields: dict[str, object], images: np.ndarray) -> str:
    """The key as the cache has always defined it: the fields and shape as sorted JSON, then
    the pixels' bytes in C order."""
    shaping = {**fields, "shape": list(images.shape)}
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode())
    digest.update(images.tobytes())
    return digest.hexdigest()[:32]


def test_the_key_is_the_digest_of_the_fields_and_every_pixel(
    images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = entry_fields("backbone", "cpu", "None", "onnxruntime")
    monkeypatch.setattr(feature_entries, "PIXEL_BLOCK", 3)  # several blocks, the last short
    assert entry_key(fields, images) == _key_from_bytes(fields, images)
    changed = images.copy()
    changed[9, 5, 4, 2] ^= 1
    assert entry_key(fields, changed) != entry_key(fields, images)


def test_a_strided_view_has_its_copys_key(images: np.ndarray) -> None:
    fields = entry_fields("backbone", "cpu", "None", "onnxruntime")
    flipped = images[:, :, ::-1]  # not contiguous
    assert not flipped.flags.c_contiguous
    assert entry_key(fields, flipped) == entry_key(fields, np.ascontiguousarray(flipped))
