from pathlib import Path
from typing import Any

import pytest
import yaml

from imgpipe.params import ParamsError, load_params, parse_params
from tests.conftest import REPO_ROOT


def committed() -> dict[str, Any]:
    params: dict[str, Any] = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    return params


def test_committed_params_are_valid() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.data.source == "builtin:mnist5k"
    assert params.preprocess.test_fraction * 5000 >= 1000  # the test-split minimum


def test_every_param_has_a_comment() -> None:
    for number, line in enumerate((REPO_ROOT / "params.yaml").read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            assert "#" in line, f"params.yaml:{number} has no comment: {line!r}"


def test_unknown_key_is_named_with_a_suggestion() -> None:
    raw = committed()
    raw["lrr"] = raw.pop("lr")
    with pytest.raises(ParamsError) as error:
        parse_params(raw, "params.yaml")
    message = str(error.value)
    assert "unknown key 'lrr' (did you mean 'lr'?)" in message
    assert "missing key 'lr'" in message


def test_unknown_nested_key_is_named() -> None:
    raw = committed()
    raw["preprocess"]["image_sise"] = 32
    with pytest.raises(ParamsError, match=r"unknown key 'preprocess.image_sise' \(did you mean"):
        parse_params(raw)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("lr", "fast", r"'lr': Input should be a valid number.*got 'fast'"),
        ("epochs", 0, r"'epochs': Input should be greater than or equal to 1 \(got 0\)"),
        ("device", "tpu", r"'device': Input should be 'auto', 'cpu' or 'cuda'"),
    ],
)
def test_wrong_values_are_named(key: str, value: object, expected: str) -> None:
    raw = committed()
    raw[key] = value
    with pytest.raises(ParamsError, match=expected):
        parse_params(raw)


def test_impossible_split_is_refused() -> None:
    raw = committed()
    raw["preprocess"]["val_fraction"] = 0.5
    raw["preprocess"]["test_fraction"] = 0.45
    with pytest.raises(
        ParamsError, match=r"'preprocess': val_fraction \+ test_fraction must stay below 0.9"
    ):
        parse_params(raw)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [1,\n")
    with pytest.raises(ParamsError, match=r"broken\.yaml: not valid YAML"):
        load_params(broken)


def test_check_across_keys_names_both() -> None:
    raw = committed()
    raw["epochs"] = 1
    raw["warmup_epochs"] = 1
    with pytest.raises(ParamsError) as error:
        parse_params(raw, "params.yaml")
    assert str(error.value) == ("params.yaml: warmup_epochs (1.0) must be smaller than epochs (1)")


@pytest.mark.parametrize(
    ("evaluate", "expected"),
    [
        (
            {"positive_class": "7"},
            "'evaluate': evaluate.positive_class '7' needs a target: set "
            "evaluate.target_sensitivity or evaluate.target_specificity (e.g. 0.95)",
        ),
        (
            {"positive_class": "7", "target_sensitivity": 0.9, "target_specificity": 0.9},
            "'evaluate': set one of evaluate.target_sensitivity and "
            "evaluate.target_specificity, not both",
        ),
        (
            {"target_specificity": 0.9},
            "'evaluate': evaluate.target_sensitivity/target_specificity need "
            "evaluate.positive_class (the class a screening test looks for)",
        ),
        (
            {"positive_class": "7", "target_sensitivity": 1.0},
            "'evaluate.target_sensitivity': Input should be less than 1 (got 1.0)",
        ),
        (
            {"bootstrap_resamples": 200},
            "'evaluate.bootstrap_resamples': Input should be greater than or equal to 1000 "
            "(got 200)",
        ),
    ],
)
def test_an_operating_point_needs_one_target_and_a_class(
    evaluate: dict[str, object], expected: str
) -> None:
    raw = committed()
    raw["evaluate"] |= evaluate
    with pytest.raises(ParamsError) as error:
        parse_params(raw, "params.yaml")
    assert str(error.value) == f"params.yaml: {expected}"
