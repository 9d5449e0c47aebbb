"""How far a model's probabilities are from the frequencies they claim: the expected
calibration error and the reliability diagram's rows, in numpy alone, so that export's int8 gate
and the evaluate stage measure it the same way."""

from __future__ import annotations

from typing import Any

import numpy as np

RELIABILITY_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017


def calibration(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = RELIABILITY_BINS
) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error of the top-1 confidence, and the reliability-diagram rows.

    ECE = sum over equal-width confidence bins of (share of images in the bin) x |accuracy -
    mean confidence| (Guo et al. 2017); empty bins contribute nothing and get no row.
    """
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    # Bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 joins the first bin.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error, rows = 0.0, []
    for b in range(bins):
        members = index == b
        if not members.any():
            continue
        accuracy, mean_confidence = (
            float(correct[members].mean()),
            float(confidence[members].mean()),
        )
        error += members.mean() * abs(accuracy - mean_confidence)
        rows.append(
            {
                "confidence": round(mean_confidence, 6),
                "accuracy": round(accuracy, 6),
                "images": int(members.sum()),
            }
        )
    return round(float(error), 6), rows


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``, in float64."""
    scaled = logits.astype(np.float64) / temperature
    shifted = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def negative_log_likelihood(
    labels: np.ndarray, logits: np.ndarray, temperature: float = 1.0
) -> float:
    """Mean cross-entropy of ``logits / temperature`` against ``labels`` (log-sum-exp, stable
    for confident models whose probabilities round to 0)."""
    scaled = logits.astype(np.float64) / temperature
    peak = scaled.max(axis=1, keepdims=True)
    log_norm = peak[:, 0] + np.log(np.exp(scaled - peak).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))


def calibration_summary(
    labels: np.ndarray, logits: np.ndarray, temperature: float, method: str
) -> dict[str, Any]:
    """What temperature scaling did on the split it was fitted on: the negative log-likelihood
    and ECE before (``_uncalibrated``) and after."""
    before, after = softmax(logits), softmax(logits, temperature)
    return {
        "method": method,
        "temperature": temperature,
        "val_images": len(labels),
        "val_nll_uncalibrated": round(negative_log_likelihood(labels, logits), 6),
        "val_nll": round(negative_log_likelihood(labels, logits, temperature), 6),
        "val_ece_uncalibrated": calibration(labels, before)[0],
        "val_ece": calibration(labels, after)[0],
    }
