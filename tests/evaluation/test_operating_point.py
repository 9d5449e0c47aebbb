import numpy as np
import pytest

from imgpipe.errors import ImgpipeError
from imgpipe.evaluation.operating_point import choose_operating_point, images_needed

CLASSES = ["healthy", "sick"]


def screening_split(images: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, positives scoring higher on average, with overlap."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(images) < 0.3).astype(np.int64)
    sick = 1 / (1 + np.exp(-(rng.normal(0, 1.5, images) + 2.5 * (labels - 0.5) * 2)))
    return labels, np.stack([1 - sick, sick], axis=1)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99])
def test_the_threshold_meets_a_target_sensitivity_and_is_the_most_specific_that_does(
    target: float,
) -> None:
    labels, probabilities = screening_split()
    choice = choose_operating_point(
        labels, probabilities, CLASSES, "sick", target="sensitivity", target_value=target
    )
    assert choice.threshold is not None
    sick = probabilities[:, 1]
    positives = sick[labels == 1]
    assert (positives >= choice.threshold).mean() >= target
    assert choice.val_sensitivity == round(float((positives >= choice.threshold).mean()), 6)
    higher = positives[positives > choice.threshold]
    if len(higher):  # the next threshold up misses the target
        assert (positives >= higher.min()).mean() < target


@pytest.mark.parametrize("target", [0.8, 0.95])
def test_the_threshold_meets_a_target_specificity_and_is_the_most_sensitive_that_does(
    target: float,
) -> None:
    labels, probabilities = screening_split(seed=3)
    choice = choose_operating_point(
        labels, probabilities, CLASSES, "sick", target="specificity", target_value=target
    )
    assert choice.threshold is not None
    negatives = probabilities[labels == 0, 1]
    assert (negatives < choice.threshold).mean() >= target
    lower = negatives[negatives < choice.threshold]
    assert (negatives < lower.max()).mean() < target  # one step down misses the target


def test_one_class_against_the_rest_of_several() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 500)
    probabilities = rng.dirichlet(np.ones(4), 500)
    probabilities[labels == 2, 2] += 0.5
    probabilities /= probabilities.sum(1, keepdims=True)
    choice = choose_operating_point(
        labels, probabilities, ["a", "b", "c", "d"], "c", target="sensitivity", target_value=0.9
    )
    assert choice.threshold is not None and choice.val_sensitivity is not None
    assert choice.val_sensitivity >= 0.9
    assert choice.val_positives == int((labels == 2).sum())


def test_too_few_positives_give_no_threshold_and_say_why() -> None:
    labels, probabilities = screening_split(images=40, seed=1)
    positives = int(labels.sum())
    assert positives < images_needed(0.99) == 100
    choice = choose_operating_point(
        labels, probabilities, CLASSES, "sick", target="sensitivity", target_value=0.99
    )
    assert choice.threshold is None
    assert choice.to_dict()["operating_point_note"] == (
        f"the validation split has {positives} positives of 'sick'; a sensitivity of 0.99 needs "
        "at least 100 to be told apart from chance: no threshold chosen (more validation data, "
        "or a lower target)"
    )


def test_a_positive_class_that_is_not_a_class_is_named() -> None:
    labels, probabilities = screening_split()
    with pytest.raises(ImgpipeError, match=r"'pneumonia' is not a class .*healthy, sick"):
        choose_operating_point(
            labels, probabilities, CLASSES, "pneumonia", target="sensitivity", target_value=0.9
        )
