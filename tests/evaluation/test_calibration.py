import numpy as np
import pytest

from imgpipe.evaluation.calibration import (
    calibration,
    calibration_summary,
    negative_log_likelihood,
    softmax,
)
from imgpipe.evaluation.temperature import fit_temperature, why_no_temperature


def drawn_labels(logits: np.ndarray, seed: int = 0) -> np.ndarray:
    """Labels drawn from softmax(logits): a model whose logits are exactly calibrated."""
    probabilities = softmax(logits)
    cumulative = probabilities.cumsum(1)
    draws = np.random.default_rng(seed).random((len(logits), 1))
    labels: np.ndarray = np.minimum((draws > cumulative).sum(1), logits.shape[1] - 1)
    return labels


def true_logits(images: int = 20_000, classes: int = 5, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2.5, (images, classes))


@pytest.mark.parametrize("temperature", [0.5, 2.0, 3.0])
def test_a_known_temperature_is_recovered(temperature: float) -> None:
    logits = true_logits()
    labels = drawn_labels(logits)
    # The model's logits are the calibrated ones times T: dividing by the fit undoes it.
    fitted = fit_temperature(logits * temperature, labels)
    assert fitted == pytest.approx(temperature, rel=0.04)


def test_an_under_confident_model_gets_calibrated_without_changing_its_answers() -> None:
    logits = true_logits()
    labels = drawn_labels(logits)
    timid = logits / 3  # under-confident, like a label-smoothed, weight-averaged network
    temperature = fit_temperature(timid, labels)
    assert temperature < 0.5
    before, after = softmax(timid), softmax(timid, temperature)
    assert calibration(labels, after)[0] < calibration(labels, before)[0] / 3
    assert calibration(labels, after)[0] < 0.02
    np.testing.assert_array_equal(after.argmax(1), before.argmax(1))  # accuracy untouched
    summary = calibration_summary(labels, timid, temperature, "temperature")
    assert summary["val_nll"] < summary["val_nll_uncalibrated"]
    assert summary["val_ece"] < summary["val_ece_uncalibrated"]
    assert summary["val_images"] == len(labels)


def test_the_fit_is_deterministic_and_bounded() -> None:
    logits = true_logits(2_000)
    labels = drawn_labels(logits)
    assert fit_temperature(logits, labels) == fit_temperature(logits.copy(), labels.copy())
    # Every image right with a wide margin: the likelihood keeps improving as T shrinks, until
    # the gradient vanishes; the result stays finite, inside the bounds, and sharpens.
    separable = np.eye(3)[np.arange(300) % 3] * 5
    assert 0.05 <= fit_temperature(separable, np.arange(300) % 3) < 1
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0


def test_negative_log_likelihood_is_stable_for_confident_logits() -> None:
    logits = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    assert negative_log_likelihood(np.array([0, 1]), logits) == pytest.approx(0.0)
    assert negative_log_likelihood(np.array([1, 0]), logits) == pytest.approx(1000.0)
    assert negative_log_likelihood(np.array([1, 0]), logits, temperature=10) == pytest.approx(100.0)


def test_no_temperature_is_fitted_on_a_split_without_a_single_error() -> None:
    """The fit would sharpen without bound (every probability 1.0): refused, with the reason."""
    logits = true_logits(200)
    labels = logits.argmax(1)
    reason = why_no_temperature(logits, labels)
    assert reason is not None and reason.startswith("all 200 validation images are classified")
    labels[0] = (labels[0] + 1) % logits.shape[1]  # one error: the likelihood has a minimum
    assert why_no_temperature(logits, labels) is None
    assert why_no_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) is not None
