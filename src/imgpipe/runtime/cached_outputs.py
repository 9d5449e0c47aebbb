"""An exported model's outputs from the feature cache, when the pipeline already computed the
images' backbone features (``finetune: head`` on the CPU: the audit and train ran the frozen
backbone over every training and validation image): drift-baseline's reference sample, and
the fp32 side of export-onnx's int8 gate on the validation split.

export-onnx keeps the exported model's classifier head beside those features
(:func:`imgpipe.export.onnx.keep_head_for_drift`). The embedding of such a model is the cached
features, and its logits are that head on them; onnxruntime computes both bit for bit as the
whole model does (the tests hold this), so a cached reference table equals the one computed
from pixels, and the gate's figures are the same. Anything missing (another model, another
backbone, a cleared cache) and the stage runs the whole model, as before.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from imgpipe.io import file_sha256
from imgpipe.runtime.feature_entries import FIELDS_KEY, head_entry, split_entry
from imgpipe.runtime.onnx_contract import OUTPUT_NAMES
from imgpipe.runtime.onnx_model import open_session, softmax

log = logging.getLogger(__name__)


def cached_outputs(
    model: Path, parts: list[np.ndarray], rows: list[np.ndarray], cache: Path | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Softmax probabilities and embeddings of the images ``parts[i][rows[i]]`` (in that
    order) under the ONNX ``model``, from the feature ``cache``; None when it lacks them."""
    if cache is None:
        return None
    head_file = head_entry(cache, file_sha256(model))
    if not head_file.is_file():
        return None
    head = open_session(head_file)
    fields = json.loads(head.get_modelmeta().custom_metadata_map[FIELDS_KEY])
    entries = [split_entry(cache, fields, part) for part in parts]
    if not all(entry.is_file() for entry in entries):
        return None
    chosen = []
    for entry, picked in zip(entries, rows, strict=True):
        with np.load(entry) as stored:
            chosen.append(stored["features"][picked])
    embeddings = np.concatenate(chosen)
    logits_name, embedding_name = OUTPUT_NAMES
    (logits,) = head.run([logits_name], {embedding_name: embeddings})
    log.info("the cached features of %d images from %s", len(embeddings), cache)
    return softmax(logits), embeddings
