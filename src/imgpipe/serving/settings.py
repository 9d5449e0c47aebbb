"""How the service runs: every field has an ``imgpipe serve`` option, whose default is taken
from here. Importable without FastAPI, so the CLI stays quick."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from imgpipe.runtime.classify import SERVED_MAX_PIXELS


@dataclass(frozen=True)
class ServeConfig:
    model: Path
    max_upload_bytes: int = 16 * 2**20  # whole request body
    max_images: int = 32  # files per request
    max_pixels: int = SERVED_MAX_PIXELS  # per image, checked before decoding (decompression bombs)
    batch_window_ms: float = 2.0  # how long a lone request waits for company
    max_batch: int = 64  # images per onnxruntime call
    threads: int = 0  # onnxruntime intra-op threads; 0 = all cores
    feature_log: Path | None = None  # JSON lines of per-image features; None = no log
    feature_log_max_bytes: int = 50 * 2**20  # rotate after this size ...
    feature_log_backups: int = 10  # ... keeping this many old files
    token: str | None = field(default=None, repr=False)  # bearer token /predict requires
    token_for_metrics: bool = False  # /metrics requires it too (/health never does)
    threshold: float | None = None  # replaces the operating point's threshold; None: the model's
    baseline: Path | None = None  # drift-baseline summary exported for the alerts; None: none
