"""Batch predictions: every image of some files and folders, and the frames of video files,
through the exported model, in batches, into a table (CSV or Parquet) or JSON lines, with one
row per image or frame; a file that cannot be read is a row with its error, never a crash.
Decoding follows the service's policy (:class:`~imgpipe.runtime.classify.DecodePolicy`) on a pool of
threads (Pillow decodes without the GIL); video frames are prepared the way preprocess prepares
them (:func:`~imgpipe.data.images.prepare_image`), one at a time. A model with an operating point
also gets each image's probability of the positive class and its decision."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from imgpipe.data.images import ImageDecodeError, prepare_image
from imgpipe.data.layout import files_below
from imgpipe.data.video import FrameRate, VideoDecodeError, is_video, iter_frames
from imgpipe.errors import ImgpipeError
from imgpipe.io import atomic_path
from imgpipe.runtime.classify import Decision, DecodePolicy, decisions_per_image, top_classes
from imgpipe.runtime.onnx_model import OnnxClassifier, embedding_column_names
from imgpipe.runtime.tables import TABLE_FORMATS, TABLE_SUFFIXES

BATCH = 64  # images per onnxruntime call


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]
    embedding: np.ndarray | None = None
    error: str | None = None
    frame: int | None = None  # a video's frame index (counting every decoded frame from 0)
    # Both set only when the model has an operating point (and the image was classified).
    positive_probability: float | None = None
    decision: Decision | None = None


def find_inputs(paths: Sequence[Path]) -> list[Path]:
    """The files given, and every file below the folders given (sorted; OS junk left out).

    Raises:
        ImgpipeError: a path that does not exist.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += files_below(path)
        elif path.exists():
            found.append(path)
        else:
            raise ImgpipeError(f"{path}: no such file or folder")
    return found


def predict_files(
    classifier: OnnxClassifier,
    files: Sequence[Path],
    *,
    policy: DecodePolicy,
    top_k: int,
    embeddings: bool = False,
    threads: int = 4,
    frames: FrameRate | None = None,
) -> Iterator[Prediction]:
    """One :class:`Prediction` per image file, and per selected frame (``frames``) of each
    video file, in order."""
    pending: list[Prediction | tuple[str, int | None, np.ndarray]] = []
    decoded = 0  # images among the pending items: a batch runs when there are BATCH

    def flush() -> Iterator[Prediction]:
        ready = [item for item in pending if not isinstance(item, Prediction)]
        if ready:
            probabilities, vectors = classifier.run(np.stack([p for _, _, p in ready]), BATCH)
            screened = decisions_per_image(classifier, probabilities)
        row = 0
        for item in pending:
            if isinstance(item, Prediction):
                yield item
                continue
            path, frame, _ = item
            yield Prediction(
                path,
                top_classes(probabilities[row], classifier.classes, top_k),
                vectors[row] if embeddings else None,
                None,
                frame,
                *screened[row],
            )
            row += 1
        pending.clear()

    for item in _decoded(classifier, files, policy, threads, frames or FrameRate()):
        pending.append(item)
        decoded += not isinstance(item, Prediction)
        if decoded == BATCH:
            yield from flush()
            decoded = 0
    yield from flush()


def _decoded(
    classifier: OnnxClassifier,
    files: Sequence[Path],
    policy: DecodePolicy,
    threads: int,
    frames: FrameRate,
) -> Iterator[Prediction | tuple[str, int | None, np.ndarray]]:
    """``(path, frame, pixels)`` per image or frame, or an error :class:`Prediction`; images
    are decoded a batch at a time on a thread pool."""

    def decode(path: Path) -> np.ndarray | str:
        try:
            return policy.decode(path, classifier)
        except (ImageDecodeError, OSError) as error:
            return str(error)

    with ThreadPoolExecutor(threads, thread_name_prefix="imgpipe-decode") as pool:
        for start in range(0, len(files), BATCH):
            chunk = files[start : start + BATCH]
            images = [path for path in chunk if not is_video(path)]
            decoded = dict(zip(images, pool.map(decode, images), strict=True))
            for path in chunk:
                if is_video(path):
                    yield from _video_frames(classifier, path, frames)
                elif isinstance(result := decoded[path], str):
                    yield Prediction(str(path), [], None, result)
                else:
                    yield str(path), None, result


def _video_frames(
    classifier: OnnxClassifier, path: Path, frames: FrameRate
) -> Iterator[Prediction | tuple[str, int | None, np.ndarray]]:
    """The selected frames of one video; a video that fails is one error row (after the
    frames decoded before the failure, when it fails part way)."""
    try:
        for index, image in iter_frames(path, frames):
            yield str(path), index, prepare_image(image, classifier.image_size, classifier.channels)
    except VideoDecodeError as error:
        yield Prediction(str(path), [], None, str(error))
    except OSError as error:
        yield Prediction(str(path), [], None, f"cannot read: {error.strerror or error}")


def columns(top_k: int, embedding_dims: int, decisions: bool = False) -> list[str]:
    """path, frame, error, class_1, probability_1, ..., positive_probability and decision for
    a model with an operating point, and emb_* when embeddings are kept."""
    names = ["path", "frame", "error"]
    for rank in range(1, top_k + 1):
        names += [f"class_{rank}", f"probability_{rank}"]
    names += ["positive_probability", "decision"] if decisions else []
    return names + (embedding_column_names(embedding_dims) if embedding_dims else [])


def to_row(
    prediction: Prediction, top_k: int, embedding_dims: int, decisions: bool = False
) -> dict[str, Any]:
    """One table row; the columns of :func:`columns`, empty where the image had an error."""
    row: dict[str, Any] = dict.fromkeys(columns(top_k, embedding_dims, decisions))
    row["path"], row["error"] = prediction.path, prediction.error or ""
    row["frame"] = prediction.frame
    for rank, (name, probability) in enumerate(prediction.top[:top_k], 1):
        row[f"class_{rank}"], row[f"probability_{rank}"] = name, round(probability, 6)
    if decisions and prediction.positive_probability is not None:
        row["positive_probability"] = round(prediction.positive_probability, 6)
        row["decision"] = prediction.decision
    if prediction.embedding is not None:
        names = embedding_column_names(embedding_dims)
        row |= dict(zip(names, prediction.embedding.tolist(), strict=True))
    return row


def write_predictions(
    predictions: Iterable[Prediction],
    output: Path | None,
    *,
    top_k: int,
    embedding_dims: int,
    stream: IO[str],
    decisions: bool = False,
) -> tuple[int, int]:
    """Write to ``output`` (.csv, .parquet or .jsonl, complete or not at all) or as JSON lines
    on ``stream``, with the decision columns when ``decisions``; returns ``(rows, errors)``."""
    suffix = output.suffix.lower() if output is not None else ".jsonl"
    if suffix not in TABLE_SUFFIXES:
        raise ImgpipeError(f"--output {output}: expected a {', '.join(TABLE_SUFFIXES)} file")
    names = columns(top_k, embedding_dims, decisions)
    rows = [to_row(p, top_k, embedding_dims, decisions) for p in predictions]
    errors = sum(bool(row["error"]) for row in rows)
    if output is None:
        stream.writelines(json.dumps(row) + "\n" for row in rows)
        return len(rows), errors
    write, _ = TABLE_FORMATS[suffix]
    with atomic_path(output) as temporary:
        write(rows, names, temporary)
    return len(rows), errors
