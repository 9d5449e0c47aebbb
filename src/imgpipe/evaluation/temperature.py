"""Temperature scaling (Guo et al. 2017): one scalar T that divides the logits, fitted on the
validation split to minimise its negative log-likelihood. The argmax, hence accuracy, cannot
change; the probabilities stop being over- or under-confident.

A fit in torch rather than a library's: netcal's ``TemperatureScaling`` fits on confidences
and pulls in its own optimiser stack for what is a one-parameter convex problem, which L-BFGS
solves here in a few milliseconds, exactly and deterministically.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)

# T is searched as exp(log_t) within these bounds: far beyond any real model's temperature,
# and keeps a degenerate split (every image right, logits growing without bound) finite.
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))


def why_no_temperature(logits: np.ndarray, labels: np.ndarray) -> str | None:
    """Why no temperature can be fitted on this split, or None when one can: with every image
    classified right, the likelihood keeps rising as T falls, and the "fit" would only make
    the model claim certainty it has not shown."""
    if len(labels) == 0:
        return "the validation split is empty"
    if (np.asarray(logits).argmax(1) == labels).all():
        return (
            f"all {len(labels)} validation images are classified right, so the likelihood "
            "rises without bound as the temperature falls: no temperature fitted, the "
            "probabilities stay as the network gives them (a larger or harder validation "
            "split lets calibration work)"
        )
    return None


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the mean cross-entropy of ``logits / T`` on ``labels``
    (``N x K`` logits, ``N`` integer labels), rounded to 6 digits so reruns compare equal."""
    if len(labels) == 0:
        return 1.0
    scores = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [log_t], lr=0.5, max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        value = F.cross_entropy(scores / log_t.clamp(*LOG_T_BOUNDS).exp(), targets)
        value.backward()  # type: ignore[no-untyped-call]
        return value

    optimiser.step(loss)  # type: ignore[no-untyped-call]
    return round(float(log_t.detach().clamp(*LOG_T_BOUNDS).exp()), 6)
