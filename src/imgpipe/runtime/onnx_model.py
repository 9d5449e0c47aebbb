"""The exported model at run time, without torch: the ONNX contract, onnxruntime sessions and
the classifier built on them.

The contract (written by :mod:`imgpipe.export.onnx`, its names in
:mod:`imgpipe.runtime.onnx_contract`): input ``images`` (``uint8``, ``N x C x H x W``),
outputs ``logits`` and the penultimate-layer ``embedding``, and the model's metadata (classes,
image size, channels, normalisation, ...) as JSON under the metadata key ``imgpipe``, an
:class:`OperatingPoint` among it when the model has a positive class. The service,
``imgpipe predict``, ``imgpipe drift`` and the drift-baseline stage need only this module,
onnxruntime and numpy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgpipe.errors import ImgpipeError
from imgpipe.runtime.onnx_contract import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES


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


@dataclass(frozen=True)
class OperatingPoint:
    """A screening rule chosen on the validation split: an image is positive when its
    probability of ``positive_class`` is at least ``threshold``."""

    positive_class: str
    threshold: float


def read_operating_point(
    meta: dict[str, Any], classes: list[str], path: Path
) -> OperatingPoint | None:
    """The metadata's ``operating_point``; None when the model has no positive class.

    Raises:
        ImgpipeError: a malformed entry (not an object, a class the model does not have, a
            threshold that is not a probability), naming the file.
    """
    entry = meta.get("operating_point")
    if entry is None:
        return None
    where = f"{path}: metadata 'operating_point'"
    if not isinstance(entry, dict) or not {"positive_class", "threshold"} <= entry.keys():
        raise ImgpipeError(f"{where}: expected {{positive_class, threshold, ...}}, got {entry!r}")
    positive_class, threshold = entry["positive_class"], entry["threshold"]
    if positive_class not in classes:
        raise ImgpipeError(f"{where}: positive_class {positive_class!r} is not among {classes}")
    return OperatingPoint(positive_class, _probability(threshold, f"{where}: threshold"))


def with_threshold(point: OperatingPoint | None, threshold: float, path: Path) -> OperatingPoint:
    """``point`` at another threshold (``--threshold``, the service's setting).

    Raises:
        ImgpipeError: the model has no operating point to move, or ``threshold`` is not a
            probability.
    """
    if point is None:
        raise ImgpipeError(
            f"{path}: the model has no positive class (set evaluate.positive_class and rerun "
            "dvc repro); --threshold needs one"
        )
    return OperatingPoint(point.positive_class, _probability(threshold, "--threshold"))


def _probability(value: object, what: str) -> float:
    """``value`` as a float in [0, 1] (JSON's true and false are no probabilities)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ImgpipeError(f"{what} {value!r}: expected a probability from 0 to 1")
    return float(value)


class OnnxClassifier:
    """The exported model in onnxruntime, with its embedded metadata; ``threshold`` replaces
    the operating point's threshold (an error when the model has none)."""

    def __init__(
        self, path: Path, threads: int = 0, spin: bool = True, threshold: float | None = None
    ) -> None:
        self.session = open_session(path, threads, spin)
        self.meta = session_metadata(self.session, path)
        self.classes: list[str] = list(self.meta["classes"])
        self.image_size = int(self.meta["image_size"])
        self.channels = int(self.meta["channels"])
        # The embedding's width is static in the graph (only the batch axis is dynamic).
        self.embedding_dims = int(self.session.get_outputs()[1].shape[-1])
        point = read_operating_point(self.meta, self.classes, path)
        self.operating_point = (
            point if threshold is None else with_threshold(point, threshold, path)
        )

    def run(self, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Softmax probabilities and embeddings for ``N x H x W x C`` uint8 images, in batches
        of ``batch_size`` (32: as fast per image as larger batches on a CPU, a fraction of
        their memory)."""
        probabilities, embeddings = [], []
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size].transpose(0, 3, 1, 2))
            logits, embedding = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
            probabilities.append(softmax(logits))
            embeddings.append(embedding)
        return np.concatenate(probabilities), np.concatenate(embeddings)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of ``N x K`` logits, row by row (each row's the same in any batch)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return result


def embedding_column_names(dimensions: int) -> list[str]:
    """``emb_0 ... emb_N``, zero-padded so that they sort in order."""
    width = len(str(dimensions - 1))
    return [f"emb_{i:0{width}d}" for i in range(dimensions)]
