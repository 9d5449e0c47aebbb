"""``finetune: lp-ft``'s first half: a linear probe (a logistic regression on the frozen
backbone's cached features), written into the network's classifier so that fine-tuning starts
from a head that already fits instead of a random one. A random head's large early gradients
distort the pretrained features before it has learnt anything; a fitted one does not (Kumar et
al., "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution",
ICLR 2022).

The probe is scikit-learn's L2-regularised logistic regression (L-BFGS, run to convergence, so
deterministic) on the features divided by one scalar, their root mean square, so that the
strengths tried mean the same for every backbone; the scalar is folded into the weights. Not a
per-feature standardisation: that would give nearly constant features huge weights, which
the first training batches (batch-norm statistics of the batch, not the running ones) then
turn into huge logits. Its regularisation strength is chosen on the validation split, never
the test split.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imgpipe.errors import ImgpipeError

log = logging.getLogger(__name__)

STRENGTHS = (0.01, 0.1, 1.0)  # inverse L2 strengths (sklearn's C) tried on RMS-scaled features
ABSENT_CLASS_MARGIN = 10.0  # logits below the others' lowest bias for classes train lacks


@dataclass(frozen=True)
class Probe:
    """A fitted linear classifier over raw features: ``logits = features @ weight.T + bias``."""

    weight: np.ndarray  # classes x D
    bias: np.ndarray  # classes
    strength: float  # the chosen C
    val_accuracy: float
    val_loss: float  # mean cross-entropy on the validation split


def fit_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    *,
    classes: int,
    seed: int,
) -> Probe:
    """The logistic regression (one of :data:`STRENGTHS`, the lowest validation loss) over the
    ``classes`` classes; a class without training images gets zero weights and a bias that
    keeps it improbable.

    Raises:
        ImgpipeError: fewer than two classes have training images.
    """
    from sklearn.linear_model import LogisticRegression

    present = np.unique(train_labels)
    if len(present) < 2:
        raise ImgpipeError(
            f"finetune: lp-ft: the training split has images of {len(present)} class(es); "
            "a linear probe needs at least two"
        )
    scale = feature_scale(train_features)
    scaled = train_features.astype(np.float64) / scale
    best: Probe | None = None
    for strength in STRENGTHS:
        regression = LogisticRegression(C=strength, max_iter=2000, random_state=seed)
        regression.fit(scaled, train_labels)
        weight, bias = _unfold(regression.coef_, regression.intercept_, scale, present, classes)
        probe = _scored(weight, bias, strength, val_features, val_labels)
        if best is None or probe.val_loss < best.val_loss:
            best = probe
    assert best is not None
    return best


def feature_scale(features: np.ndarray) -> float:
    """The features' root mean square (1 when they are all zero)."""
    rms = float(np.sqrt(np.mean(np.square(features, dtype=np.float64))))
    return rms if rms > 0 else 1.0


def _unfold(
    coef: np.ndarray, intercept: np.ndarray, scale: float, present: np.ndarray, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Weights over raw features for all ``classes``: the scale folded in, a binary
    regression's single row made two symmetric ones, absent classes added."""
    if coef.shape[0] == 1:  # binary: sklearn keeps one row, the second class's logit
        coef = np.concatenate([-coef, coef]) / 2
        intercept = np.concatenate([-intercept, intercept]) / 2
    folded, folded_bias = coef / scale, intercept
    weight = np.zeros((classes, coef.shape[1]))
    bias = np.full(classes, folded_bias.min() - ABSENT_CLASS_MARGIN)
    weight[present], bias[present] = folded, folded_bias
    return weight, bias


def _scored(
    weight: np.ndarray, bias: np.ndarray, strength: float, features: np.ndarray, labels: np.ndarray
) -> Probe:
    logits = torch.from_numpy(features.astype(np.float64) @ weight.T + bias)
    targets = torch.from_numpy(labels.astype(np.int64))
    loss = float(nn.functional.cross_entropy(logits, targets))
    accuracy = float((logits.argmax(1) == targets).double().mean()) if len(labels) else 0.0
    return Probe(weight, bias, strength, accuracy, loss)


def linear_head(head: nn.Module, features: int) -> nn.Linear:
    """``head`` itself, once it is known to be one linear layer over ``features`` inputs.

    Raises:
        ImgpipeError: it is not.
    """
    if not isinstance(head, nn.Linear) or head.in_features != features or head.bias is None:
        raise ImgpipeError(
            f"finetune: lp-ft needs a classifier that is one linear layer with a bias over the "
            f"{features} features; this model's is a {type(head).__name__}: use finetune: full"
        )
    return head


def probe_head(
    head: nn.Module,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    *,
    seed: int,
) -> Probe:
    """Fit the probe and write it into ``head``; one log line says what it reached."""
    started = time.perf_counter()
    linear = linear_head(head, train_features.shape[1])
    classes = linear.out_features
    probe = fit_probe(
        train_features, train_labels, val_features, val_labels, classes=classes, seed=seed
    )
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(probe.weight))
        linear.bias.copy_(torch.from_numpy(probe.bias))
    log.info(
        "linear probe (C=%g, %.1f s): val_accuracy %.4f  val_loss %.4f; fine-tuning from it",
        probe.strength,
        time.perf_counter() - started,
        probe.val_accuracy,
        probe.val_loss,
    )
    return probe
