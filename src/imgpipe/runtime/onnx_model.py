"""The exported model at run time, without torch: the ONNX contract, onnxruntime sessions and
the classifier built on them.

The contract (written by :mod:`imgpipe.export.onnx`): input ``images`` (``uint8``,
``N x C x H x W``), outputs ``logits`` and the penultimate-layer ``embedding``, and the
model's metadata (classes, image size, channels, normalisation, ...) as JSON under the
metadata key :data:`METADATA_KEY`. The service, ``imgpipe predict``, ``imgpipe drift`` and
the drift-baseline stage need only this module, onnxruntime and numpy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from imgpipe.errors import ImgpipeError

METADATA_KEY = "imgpipe"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "embedding")


def open_session(path: Path, threads: int = 0, spin: bool = True) -> Any:
    """An onnxruntime session on the best available provider (CUDA when present).

    ``spin=False`` stops idle worker threads busy-waiting for the next call: right for a
    service, whose event loop and decoding threads need the cores between batches.
    """
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ImgpipeError(f"{path}: ONNX model not found (run `dvc repro export-onnx`)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        str(path), sess_options=options, providers=ort.get_available_providers()
    )


def session_metadata(session: Any, path: Path) -> dict[str, Any]:
    """The metadata the export stage embedded (classes, image size, normalisation, ...)."""
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ImgpipeError(f"{path}: no '{METADATA_KEY}' metadata; was it exported by imgpipe?")
    return dict(json.loads(raw))


def read_onnx_metadata(path: Path) -> dict[str, Any]:
    return session_metadata(open_session(path), path)


class OnnxClassifier:
    """The exported model in onnxruntime, with its embedded metadata."""

    def __init__(self, path: Path, threads: int = 0, spin: bool = True) -> None:
        self.session = open_session(path, threads, spin)
        self.meta = session_metadata(self.session, path)
        self.classes: list[str] = list(self.meta["classes"])
        self.image_size = int(self.meta["image_size"])
        self.channels = int(self.meta["channels"])
        # The embedding's width is static in the graph (only the batch axis is dynamic).
        self.embedding_dims = int(self.session.get_outputs()[1].shape[-1])

    def run(self, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Softmax probabilities and embeddings for ``N x H x W x C`` uint8 images."""
        probabilities, embeddings = [], []
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size].transpose(0, 3, 1, 2))
            logits, embedding = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities.append(shifted / shifted.sum(axis=1, keepdims=True))
            embeddings.append(embedding)
        return np.concatenate(probabilities), np.concatenate(embeddings)


def embedding_column_names(dimensions: int) -> list[str]:
    """``emb_0 ... emb_N``, zero-padded so that they sort in order."""
    width = len(str(dimensions - 1))
    return [f"emb_{i:0{width}d}" for i in range(dimensions)]
