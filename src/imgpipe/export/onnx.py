"""The ``export-onnx`` stage's library: one-file ONNX, dynamic batch, metadata, parity gate.

The file follows the contract of :mod:`imgpipe.runtime.onnx_model` (input and output names,
the model's :class:`~imgpipe.training.model.ModelMeta` as JSON metadata), so a consumer needs
this one file, onnxruntime and nothing else.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from imgpipe.errors import ImgpipeError
from imgpipe.io import atomic_path, file_sha256
from imgpipe.runtime.feature_entries import FIELDS_KEY, head_entry, onnxruntime_cpu_fields
from imgpipe.runtime.onnx_contract import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES
from imgpipe.runtime.onnx_model import open_session
from imgpipe.training.backbone_graph import (
    GRAPH_OPSET,
    backbone_fingerprint,
    backbone_graph,
    export_graph,
    with_linear_classifier,
)
from imgpipe.training.model import Classifier, ModelMeta

log = logging.getLogger(__name__)

# Images per forward pass in the parity check: one batch of all 256 made torch eager 2.4x
# slower on a 2-core CPU (EfficientNet-Lite0 at 224 px: 19 s against 8 s), for the same outputs.
PARITY_BATCH = 32


class ParityError(ImgpipeError):
    """onnxruntime's outputs differ from torch's beyond the tolerance."""


class CalibratedWithEmbedding(nn.Module):
    """The exported graph: calibrated logits (divided by the fitted temperature, so that every
    consumer's softmax gives calibrated probabilities) and the embedding."""

    def __init__(self, model: Classifier, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, embedding = self.model.forward_with_embedding(images)
        if self.temperature == 1.0:  # no division node in an uncalibrated graph
            return logits, embedding
        return logits / self.temperature, embedding


def export_onnx(
    model: Classifier,
    meta: ModelMeta,
    destination: Path,
    opset: int,
    provenance: dict[str, Any],
    *,
    temperature: float = 1.0,
    graphs: Path | None = None,
) -> None:
    """Export ``model`` to a single ONNX file (no external data) with a dynamic batch axis.

    A model whose classifier is one linear layer (timm's are) is exported as its backbone's
    graph (:func:`~imgpipe.training.backbone_graph.backbone_graph`, read from ``graphs`` when the
    audit already exported the same backbone: ``finetune: head``) with the classifier
    appended; any other model whole.

    Args:
        model: the trained classifier (on the CPU).
        meta: stored in the file's metadata together with ``provenance``.
        destination: the ``.onnx`` file to write (wrap in :func:`~imgpipe.io.atomic_path` and
            check parity before it is renamed into place).
        opset: ONNX opset version.
        provenance: extra fields (the checkpoint's sha256, the temperature, the operating
            point).
        temperature: folded into the graph: its ``logits`` output is divided by it.
        graphs: the folder of exported backbone graphs (the feature cache's), or None.
    """
    classifier = model.net.get_classifier()
    if isinstance(classifier, nn.Linear):
        shape = (meta.channels, meta.image_size, meta.image_size)
        proto = with_linear_classifier(
            backbone_graph(model, shape, opset, graphs, keep=False), classifier, temperature
        )
    else:
        proto = _export_whole(model, meta, opset, temperature)
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps({**meta.to_dict(), **provenance}, sort_keys=True)
    proto.producer_name = "imgpipe"
    onnx.checker.check_model(proto)
    onnx.save_model(proto, destination, save_as_external_data=False)


def _export_whole(
    model: Classifier, meta: ModelMeta, opset: int, temperature: float
) -> onnx.ModelProto:
    shape = (meta.channels, meta.image_size, meta.image_size)
    return export_graph(
        CalibratedWithEmbedding(model, temperature), shape, opset, list(OUTPUT_NAMES)
    )


CALIBRATION_KEYS = (
    "method",
    "val_images",
    "val_nll_uncalibrated",
    "val_nll",
    "val_ece_uncalibrated",
    "val_ece",
)


def calibration_metadata(fitted: dict[str, Any]) -> dict[str, Any]:
    """What temperature scaling did on the validation split, so the model file says how far
    its probabilities can be trusted without the repository beside it."""
    return {key: fitted[key] for key in CALIBRATION_KEYS if key in fitted}


def operating_point_metadata(fitted: dict[str, Any]) -> dict[str, Any] | None:
    """What serve and predict need of calibrate's operating point (None: no threshold)."""
    if fitted.get("threshold") is None:
        return None
    return {key: fitted[key] for key in ("positive_class", "threshold", "target", "target_value")}


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff_logits: float
    max_abs_diff_embedding: float
    max_relative_diff: float  # the larger difference over its output's scale: the gated one
    prediction_agreement: float
    images: int
    torch_ms_per_image: float
    onnxruntime_ms_per_image: float


def _channels_last(images: np.ndarray) -> torch.Tensor:
    """``N x C x H x W`` images laid out channels-last, which makes torch's CPU convolutions
    take oneDNN's faster path (EfficientNet-Lite0 at 224 px on 2 cores: 28 against 45 ms per
    image) for the same outputs up to float rounding (2.4e-6 here), the model left as it is."""
    return torch.from_numpy(images).contiguous(memory_format=torch.channels_last)


def check_parity(
    onnx_path: Path,
    model: Classifier,
    images: np.ndarray,
    tolerance: float,
    *,
    temperature: float = 1.0,
) -> ParityReport:
    """Compare onnxruntime with torch (its logits divided by ``temperature``, as exported) on
    ``images`` (``N x H x W x C`` uint8).

    The images go through in batches of ``PARITY_BATCH`` and the first few once more one by
    one, which also proves the batch axis is dynamic.

    Each output's difference is measured against its scale, its largest absolute value (at
    least 1): float32 rounding grows with the values and the depth, and on a fine-tuned
    EfficientNet-Lite0 it alone moved torch's embedding by 1.1e-4 to 1.8e-4 from float64's,
    and onnxruntime's by up to 5.3e-4 from torch's (values up to 4.8), while an export bug
    (another normalisation, padding or temperature) moves outputs by percents.

    Raises:
        ParityError: when any logit or embedding value differs by more than ``tolerance``
            times its output's scale.
    """
    session = open_session(onnx_path)
    batch = np.array(images.transpose(0, 3, 1, 2), order="C")  # a writable copy for torch
    chunks = range(0, len(batch), PARITY_BATCH)
    with torch.no_grad():
        started = time.perf_counter()
        calibrated = CalibratedWithEmbedding(model, temperature).eval()
        outputs = [calibrated(_channels_last(batch[i : i + PARITY_BATCH])) for i in chunks]
        reference = [torch.cat(parts).numpy() for parts in zip(*outputs, strict=True)]
        torch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    runs = [
        session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch[i : i + PARITY_BATCH]}) for i in chunks
    ]
    batched = [np.concatenate(parts) for parts in zip(*runs, strict=True)]
    onnx_seconds = time.perf_counter() - started
    single = [session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch[i : i + 1]}) for i in range(4)]
    single_logits = np.concatenate([s[0] for s in single])
    diffs = [float(np.abs(o - r).max()) for o, r in zip(batched, reference, strict=True)]
    diffs[0] = max(diffs[0], float(np.abs(single_logits - reference[0][: len(single)]).max()))
    scales = [max(1.0, float(np.abs(r).max())) for r in reference]
    relative = max(d / scale for d, scale in zip(diffs, scales, strict=True))
    report = ParityReport(
        max_abs_diff_logits=diffs[0],
        max_abs_diff_embedding=diffs[1],
        max_relative_diff=relative,
        prediction_agreement=float((batched[0].argmax(1) == reference[0].argmax(1)).mean()),
        images=len(batch),
        torch_ms_per_image=1000 * torch_seconds / len(batch),
        onnxruntime_ms_per_image=1000 * onnx_seconds / len(batch),
    )
    if relative > tolerance:
        raise ParityError(
            f"{onnx_path}: onnxruntime differs from torch by {relative:.3g} of the outputs' "
            f"scale (logits by {diffs[0]:.3g} where the largest |logit| is {scales[0]:.3g}, "
            f"embedding by {diffs[1]:.3g} where the largest |value| is {scales[1]:.3g}), "
            f"above export.tolerance {tolerance:g}"
        )
    return report


def keep_head_for_drift(
    model_file: Path, model: Classifier, opset: int, cache: Path | None
) -> Path | None:
    """Save the classifier part of the exported model (embedding to calibrated logits) in the
    feature ``cache``, named by the model file's sha256, with the fields that name its
    backbone's feature entries, so that drift-baseline can turn the features the pipeline
    already computed into this model's outputs instead of running the backbone again
    (:mod:`imgpipe.runtime.feature_entries`).

    Only for a model exported as the cache's own backbone graph (a linear classifier, at
    the cache's opset), whose embedding is then those features; None otherwise.
    """
    if cache is None or opset != GRAPH_OPSET:
        return None
    if not isinstance(model.net.get_classifier(), nn.Linear):
        return None
    logits, embedding = OUTPUT_NAMES
    head = onnx.utils.Extractor(onnx.load(model_file)).extract_model([embedding], [logits])
    entry = head.metadata_props.add()
    entry.key = FIELDS_KEY
    entry.value = json.dumps(onnxruntime_cpu_fields(backbone_fingerprint(model)), sort_keys=True)
    path = head_entry(cache, file_sha256(model_file))
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        onnx.save_model(head, temporary)
    return path
