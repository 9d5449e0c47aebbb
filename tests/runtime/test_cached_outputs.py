"""An exported model's outputs from the feature cache: export-onnx keeps the model's classifier
head beside the frozen features, and what is built from them (drift-baseline's reference table,
the int8 gate's fp32 scores) is what the whole model gives on the pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from imgpipe.data.splits import SplitArrays
from imgpipe.export.onnx import export_onnx, keep_head_for_drift
from imgpipe.export.quantize import fp32_validation_scores
from imgpipe.monitoring.features import feature_table, sample_rows, take_rows
from imgpipe.runtime.cached_outputs import cached_outputs
from imgpipe.runtime.feature_entries import FIELDS_KEY, split_entry
from imgpipe.runtime.onnx_model import OnnxClassifier, open_session
from imgpipe.training.feature_cache import FrozenBackbone, split_features
from imgpipe.training.model import Classifier, ModelMeta
from tests.conftest import make_split

CPU = torch.device("cpu")


@pytest.fixture
def exported(
    tiny_model: tuple[Classifier, ModelMeta], tmp_path: Path
) -> tuple[Path, Path, list[SplitArrays]]:
    """The tiny model exported with a temperature, its head kept, and the frozen features of
    two splits in the cache, as the audit and train leave them."""
    model, meta = tiny_model
    cache, onnx_file = tmp_path / "features", tmp_path / "model.onnx"
    export_onnx(model, meta, onnx_file, 18, {"checkpoint_sha256": "c0ffee"}, temperature=1.7)
    assert keep_head_for_drift(onnx_file, model, 18, cache) is not None
    splits = [make_split(40, seed=3), make_split(9, seed=4)]  # train, val
    backbone = FrozenBackbone(model, CPU, cache)
    for split in splits:
        split_features(backbone, split, cache)
    return onnx_file, cache, splits


def test_a_reference_from_cached_features_is_the_table_from_pixels(
    exported: tuple[Path, Path, list[SplitArrays]], caplog: pytest.LogCaptureFixture
) -> None:
    onnx_file, cache, splits = exported
    parts = [split.images for split in splits]
    rows = sample_rows([len(part) for part in parts], 50, seed=0)
    images = take_rows(parts, rows)
    classifier = OnnxClassifier(onnx_file)
    with caplog.at_level("INFO"):
        cached = cached_outputs(onnx_file, parts, rows, cache)
    assert cached is not None and "features of 50 images from" in caplog.text
    from_cache = feature_table(classifier, images, outputs=cached)
    from_pixels = feature_table(classifier, images)
    assert not np.allclose(from_pixels["confidence"], from_pixels["confidence"].iloc[0])
    pd.testing.assert_frame_equal(from_cache, from_pixels, check_exact=True)  # bit for bit


def test_int8s_gate_scores_fp32_from_the_cache_bit_for_bit(
    exported: tuple[Path, Path, list[SplitArrays]], caplog: pytest.LogCaptureFixture
) -> None:
    onnx_file, cache, splits = exported
    val = splits[1].images
    with caplog.at_level("INFO"):
        cached = fp32_validation_scores(onnx_file, val, cache)
    assert f"cached features of {len(val)} images" in caplog.text
    computed = fp32_validation_scores(onnx_file, val, None)
    np.testing.assert_array_equal(cached.probabilities, computed.probabilities)
    assert cached.ms_per_image > 0


def test_the_head_names_the_entries_the_training_side_wrote(
    exported: tuple[Path, Path, list[SplitArrays]], tiny_model: tuple[Classifier, ModelMeta]
) -> None:
    _, cache, splits = exported
    head = next(cache.glob("head-*.onnx"))
    fields = json.loads(open_session(head).get_modelmeta().custom_metadata_map[FIELDS_KEY])
    assert fields == FrozenBackbone(tiny_model[0], CPU).fields()
    assert all(split_entry(cache, fields, split.images).is_file() for split in splits)


def test_without_every_entry_the_model_runs_on_the_pixels(
    exported: tuple[Path, Path, list[SplitArrays]],
) -> None:
    onnx_file, cache, splits = exported
    parts = [split.images for split in splits]
    rows = sample_rows([len(part) for part in parts], 20, seed=0)
    assert cached_outputs(onnx_file, parts, rows, None) is None
    other_pixels = [parts[0], 255 - parts[1]]  # val changed since: its entry is not there
    assert cached_outputs(onnx_file, other_pixels, rows, cache) is None
    for head in cache.glob("head-*.onnx"):
        head.unlink()
    assert cached_outputs(onnx_file, parts, rows, cache) is None


def test_no_head_is_kept_for_a_graph_the_features_were_not_computed_with(
    tiny_model: tuple[Classifier, ModelMeta], tmp_path: Path
) -> None:
    model, meta = tiny_model
    onnx_file = tmp_path / "model.onnx"
    export_onnx(model, meta, onnx_file, 17, {"checkpoint_sha256": "c0ffee"})
    assert keep_head_for_drift(onnx_file, model, 17, tmp_path / "features") is None  # opset
    assert keep_head_for_drift(onnx_file, model, 18, None) is None  # no cache
    assert not (tmp_path / "features").exists()
