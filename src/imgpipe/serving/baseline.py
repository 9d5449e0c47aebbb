"""The drift baseline's summary (``metrics/drift_baseline.json``), read for the service to export
beside its live series: the alerts on confidence and on the predicted-class mix compare the two
in Prometheus, so the reference has to be in Prometheus too."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgpipe.errors import ImgpipeError

DEFAULT_BASELINE = Path("metrics/drift_baseline.json")  # where the drift-baseline stage writes it


@dataclass(frozen=True)
class Baseline:
    """What the served model predicted on the drift-baseline sample."""

    path: Path
    mean_confidence: float
    confidence_quantiles: dict[str, float]  # "0.1" -> top-1 probability at that quantile
    predicted_share: dict[str, float]  # class -> share of the sample predicted as it


def load_baseline(path: Path, classes: list[str]) -> Baseline:
    """The summary at ``path``, refused when it is unreadable or names other classes than the
    served model (a baseline from another model would make the alerts compare nonsense)."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ImgpipeError(f"--baseline {path}: {error.strerror}") from None
    except ValueError as error:
        raise ImgpipeError(f"--baseline {path}: not JSON ({error})") from None
    if not isinstance(summary, dict):
        raise ImgpipeError(f"--baseline {path}: expected the drift-baseline stage's summary")
    shares = _numbers(summary, "predicted_share", path)
    if sorted(shares) != sorted(classes):
        raise ImgpipeError(
            f"--baseline {path}: its classes {sorted(shares)} are not the model's "
            f"{sorted(classes)}; pass the baseline of the served model, or --no-baseline"
        )
    mean = summary.get("mean_confidence")
    if not isinstance(mean, int | float) or not _is_probability(mean):
        raise ImgpipeError(f"--baseline {path}: mean_confidence must be a number in [0, 1]")
    # Summaries written before the quantiles were added have none: export what there is.
    quantiles: dict[str, float] = {}
    if "confidence_quantiles" in summary:
        quantiles = _numbers(summary, "confidence_quantiles", path)
    return Baseline(path, float(mean), quantiles, shares)


def _numbers(summary: dict[str, Any], key: str, path: Path) -> dict[str, float]:
    values = summary.get(key)
    if not isinstance(values, dict) or not all(_is_probability(v) for v in values.values()):
        raise ImgpipeError(f"--baseline {path}: {key} must map names to numbers in [0, 1]")
    return {str(name): float(value) for name, value in values.items()}


def _is_probability(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 1
    )
