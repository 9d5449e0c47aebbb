"""Classifying image files with the exported model, the one policy ``imgpipe predict`` and the
service share: which formats are opened, how many pixels an image may declare, how the
answer is ranked and, for a model with an operating point, what is decided."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from imgpipe.data.images import decode_image
from imgpipe.runtime.onnx_model import OnnxClassifier, OperatingPoint

# Common photo and scan formats only: Pillow's EPS plugin, for one, would hand a file to
# Ghostscript.
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
# Per served image, read from the header before decoding (decompression bombs).
SERVED_MAX_PIXELS = 25_000_000
CLASSES_REPORTED = 3  # classes reported per image unless asked otherwise

Decision = Literal["positive", "negative"]


@dataclass(frozen=True)
class DecodePolicy:
    """How files are turned into the model's input."""

    max_pixels: int = SERVED_MAX_PIXELS
    formats: tuple[str, ...] = ACCEPTED_FORMATS

    def decode(self, source: Path | bytes, classifier: OnnxClassifier) -> np.ndarray:
        """``H x W x C`` uint8 pixels at the model's size and channels, decoded the way
        preprocess decoded the training data.

        Raises:
            imgpipe.data.images.ImageDecodeError: its subclasses ``NotAnImageError`` (not an
                accepted format) and ``ImageTooLargeError`` (over ``max_pixels``) included.
        """
        return decode_image(
            source,
            classifier.image_size,
            classifier.channels,
            max_pixels=self.max_pixels,
            formats=self.formats,
        )


def top_classes(probabilities: np.ndarray, classes: list[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable classes of one image, most probable first (ties: class order)."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(classes[i], float(probabilities[i])) for i in order]


def decide(
    probabilities: np.ndarray, classes: Sequence[str], point: OperatingPoint
) -> tuple[list[Decision], np.ndarray]:
    """Each image's decision at ``point`` (positive when its probability of the positive class
    is at least the threshold) and that probability, for ``N x K`` probabilities."""
    positive = probabilities[:, list(classes).index(point.positive_class)].astype(np.float64)
    decisions: list[Decision] = [
        "positive" if probability >= point.threshold else "negative" for probability in positive
    ]
    return decisions, positive


def decisions_per_image(
    classifier: OnnxClassifier, probabilities: np.ndarray
) -> list[tuple[float | None, Decision | None]]:
    """``(positive probability, decision)`` per image at the classifier's operating point;
    Nones when the model has none."""
    if classifier.operating_point is None:
        return [(None, None)] * len(probabilities)
    decisions, positive = decide(probabilities, classifier.classes, classifier.operating_point)
    return list(zip(positive.tolist(), decisions, strict=True))
