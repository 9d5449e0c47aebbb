"""The request feature log: per-image features of live traffic, for ``imgpipe drift``."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from imgpipe.monitoring.features import image_statistics
from imgpipe.runtime.onnx_model import embedding_column_names
from imgpipe.serving.batching import Outputs

log = logging.getLogger(__name__)


class FeatureLog:
    """Per-image features (the drift baseline's columns) appended as JSON lines by a background
    thread, so requests only pay for a queue put. Files rotate by size:
    ``requests.jsonl``, ``requests.1.jsonl``, ... (each readable by ``imgpipe drift``)."""

    def __init__(
        self,
        path: Path,
        classes: list[str],
        *,
        max_bytes: int,
        backups: int,
        on_drop: Callable[[int], None] = lambda images: None,
        capacity: int = 10_000,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._classes = classes
        self._on_drop = on_drop
        self._handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
        self._handler.namer = _numbered_before_suffix
        self._queue: queue.Queue[tuple[dict[str, Any], np.ndarray, Outputs] | None] = queue.Queue(
            capacity
        )
        self._thread = threading.Thread(target=self._write, name="imgpipe-feature-log", daemon=True)
        self._thread.start()

    def submit(self, context: dict[str, Any], images: np.ndarray, outputs: Outputs) -> None:
        """Queue one request's rows; when the writer is far behind they are dropped, not
        waited for."""
        try:
            self._queue.put_nowait((context, images, outputs))
        except queue.Full:
            self._on_drop(len(images))

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()
        self._handler.close()

    def _write(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < 256:  # whatever else is queued joins this round
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [item for item in items if item is not None]
            try:
                if batch:
                    self._handler.emit(logging.makeLogRecord({"msg": self._lines(batch)}))
            except Exception:  # a bad row must not stop the writer
                log.exception("feature log: could not write %d requests' rows", len(batch))
                self._on_drop(sum(len(images) for _, images, _ in batch))
            if len(batch) < len(items):  # close() was called
                return

    def _lines(self, batch: list[tuple[dict[str, Any], np.ndarray, Outputs]]) -> str:
        """The JSON lines of several requests, built column-wise (per-row pandas would cost
        requests milliseconds of GIL time)."""
        images = np.concatenate([images for _, images, _ in batch])
        probabilities = np.concatenate([outputs[0] for _, _, outputs in batch])
        embeddings = np.concatenate([outputs[1] for _, _, outputs in batch])
        contexts = [context for context, part, _ in batch for _ in range(len(part))]
        statistics = {name: values.tolist() for name, values in image_statistics(images).items()}
        predicted = [self._classes[i] for i in probabilities.argmax(axis=1)]
        confidence = probabilities.max(axis=1).tolist()
        names = embedding_column_names(embeddings.shape[1])
        lines = []
        for row, (context, vector) in enumerate(zip(contexts, embeddings.tolist(), strict=True)):
            record = {
                **context,
                **{name: values[row] for name, values in statistics.items()},
                "predicted": predicted[row],
                "confidence": confidence[row],
                **dict(zip(names, vector, strict=True)),
            }
            lines.append(orjson.dumps(record).decode())
        return "\n".join(lines)


def _numbered_before_suffix(name: str) -> str:
    """``requests.jsonl.3`` -> ``requests.3.jsonl``: rotated logs keep their suffix."""
    stem, _, number = name.rpartition(".")
    base, dot, suffix = stem.rpartition(".")
    return f"{base}.{number}.{suffix}" if dot else name
