"""Batch predictions: every image of some files and folders through the exported model, in
batches, into a table (CSV or Parquet) or JSON lines, with one row per file; a file that cannot
be read is a row with its error, never a crash. Decoding follows the service's policy
(:class:`~imgpipe.classify.DecodePolicy`) on a pool of threads (Pillow decodes without the
GIL), while onnxruntime works on the previous batch."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from imgpipe.classify import DecodePolicy, top_classes
from imgpipe.errors import ImgpipeError
from imgpipe.features import embedding_column_names
from imgpipe.images import ImageDecodeError
from imgpipe.io import atomic_path
from imgpipe.layout import has_junk_part
from imgpipe.runtime import OnnxClassifier

BATCH = 64  # images per onnxruntime call
TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]
    embedding: np.ndarray | None = None
    error: str | None = None


def find_inputs(paths: Sequence[Path]) -> list[Path]:
    """The files given, and every file below the folders given (sorted; OS junk left out).

    Raises:
        ImgpipeError: a path that does not exist.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += [
                p for p in sorted(path.rglob("*")) if p.is_file() and not has_junk_part(p, path)
            ]
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
) -> Iterator[Prediction]:
    """One :class:`Prediction` per file, in order."""

    def decode(path: Path) -> np.ndarray | str:
        try:
            return policy.decode(path, classifier)
        except (ImageDecodeError, OSError) as error:
            return str(error)

    with ThreadPoolExecutor(threads, thread_name_prefix="imgpipe-decode") as pool:
        for start in range(0, len(files), BATCH):
            chunk = files[start : start + BATCH]
            decoded = list(pool.map(decode, chunk))
            good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
            outputs: tuple[np.ndarray, np.ndarray] | None = None
            if good:
                outputs = classifier.run(np.stack([decoded[i] for i in good]), BATCH)
            row_of = {i: row for row, i in enumerate(good)}
            for i, (path, result) in enumerate(zip(chunk, decoded, strict=True)):
                if isinstance(result, str):
                    yield Prediction(str(path), [], None, result)
                    continue
                assert outputs is not None
                probabilities, vectors = outputs[0][row_of[i]], outputs[1][row_of[i]]
                yield Prediction(
                    str(path), top_classes(probabilities, classifier.classes, top_k),
                    vectors if embeddings else None,
                )  # fmt: skip


def columns(top_k: int, embedding_dims: int) -> list[str]:
    """path, error, class_1, probability_1, ..., and emb_* when embeddings are kept."""
    names = ["path", "error"]
    for rank in range(1, top_k + 1):
        names += [f"class_{rank}", f"probability_{rank}"]
    return names + (embedding_column_names(embedding_dims) if embedding_dims else [])


def to_row(prediction: Prediction, top_k: int, embedding_dims: int) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(columns(top_k, embedding_dims))
    row["path"], row["error"] = prediction.path, prediction.error or ""
    for rank, (name, probability) in enumerate(prediction.top[:top_k], 1):
        row[f"class_{rank}"], row[f"probability_{rank}"] = name, round(probability, 6)
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
) -> tuple[int, int]:
    """Write to ``output`` (.csv, .parquet or .jsonl, complete or not at all) or as JSON lines
    on ``stream``; returns ``(rows, errors)``."""
    suffix = output.suffix.lower() if output is not None else ".jsonl"
    if suffix not in TABLE_SUFFIXES:
        raise ImgpipeError(f"--output {output}: expected a {', '.join(TABLE_SUFFIXES)} file")
    names = columns(top_k, embedding_dims)
    rows = [to_row(p, top_k, embedding_dims) for p in predictions]
    errors = sum(bool(row["error"]) for row in rows)
    if output is None:
        stream.writelines(json.dumps(row) + "\n" for row in rows)
        return len(rows), errors
    with atomic_path(output) as temporary:
        if suffix == ".parquet":
            _write_parquet(rows, names, temporary)
        else:
            with temporary.open("w", newline="", encoding="utf-8") as handle:
                if suffix == ".csv":
                    writer = csv.DictWriter(handle, fieldnames=names)
                    writer.writeheader()
                    writer.writerows(rows)
                else:
                    handle.writelines(json.dumps(row) + "\n" for row in rows)
    return len(rows), errors


def _write_parquet(rows: list[dict[str, Any]], names: list[str], target: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImgpipeError("--output .parquet needs pyarrow (pip install pyarrow)") from None
    pq.write_table(pa.Table.from_pylist(rows).select(names), target)
