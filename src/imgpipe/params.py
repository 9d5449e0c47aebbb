"""The schema of ``params.yaml``: every knob, its type and its allowed range.

Stages call :func:`load_params` before doing any work, so a typo, a wrong type or an impossible
value stops the pipeline with a message that names the key instead of failing halfway through.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from imgpipe.errors import ImgpipeError
from imgpipe.training.settings import FrozenSettings, TrainConfig

DEFAULT_PARAMS_PATH = Path("params.yaml")


class ParamsError(ImgpipeError):
    """``params.yaml`` is missing, unreadable or does not fit the schema."""


class DataParams(FrozenSettings):
    source: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    max_extract_bytes: int = Field(gt=0)


class PreprocessParams(FrozenSettings):
    image_size: int = Field(ge=8, le=4096)
    channels: Literal[1, 3]
    val_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(gt=0, lt=1)
    split_seed: int = Field(ge=0)
    group_pattern: str | None = None
    frames_per_second: float = Field(ge=0)
    frame_stride: int = Field(ge=1)
    max_frames_per_clip: int = Field(ge=0)
    near_duplicate_distance: int | None = Field(ge=0, le=256)
    workers: int = Field(ge=0)

    @field_validator("group_pattern")
    @classmethod
    def _pattern_captures_a_group(cls, pattern: str | None) -> str | None:
        if pattern is None:
            return None
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"not a regular expression: {error}") from None
        if compiled.groups < 1:
            raise ValueError("needs a capture group, e.g. '(\\d+)_' for 123_left.png")
        return pattern

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> PreprocessParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "val_fraction + test_fraction must stay below 0.9 so that training data remains "
                f"(got {self.val_fraction} + {self.test_fraction})"
            )
        return self


class EvaluateParams(FrozenSettings):
    batch_size: int = Field(ge=1)
    tta: Literal["none", "hflip", "multicrop"]
    calibration: Literal["temperature", "none"]
    bootstrap_resamples: int = Field(ge=1000, le=100_000)
    positive_class: str | None = Field(default=None, min_length=1)
    target_sensitivity: float | None = Field(default=None, gt=0, lt=1)
    target_specificity: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_target_with_a_positive_class(self) -> EvaluateParams:
        targets = [t for t in (self.target_sensitivity, self.target_specificity) if t is not None]
        if len(targets) > 1:
            raise ValueError(
                "set one of evaluate.target_sensitivity and evaluate.target_specificity, not both"
            )
        if self.positive_class is not None and not targets:
            raise ValueError(
                f"evaluate.positive_class '{self.positive_class}' needs a target: set "
                "evaluate.target_sensitivity or evaluate.target_specificity (e.g. 0.95)"
            )
        if self.positive_class is None and targets:
            raise ValueError(
                "evaluate.target_sensitivity/target_specificity need evaluate.positive_class "
                "(the class a screening test looks for)"
            )
        return self


class ExportParams(FrozenSettings):
    opset: int = Field(ge=17, le=23)
    tolerance: float = Field(gt=0)
    int8: bool
    calibration_images: int = Field(ge=1)
    int8_max_drop: float = Field(ge=0, le=1)
    int8_max_ece_rise: float = Field(ge=0, le=1)
    int8_float_convolutions: Annotated[int, Field(ge=0)] | Literal["auto"]


class DriftBaselineParams(FrozenSettings):
    sample_size: int = Field(ge=10)
    seed: int = Field(ge=0)


class AuditParams(FrozenSettings):
    folds: int = Field(ge=2, le=20)
    epochs: int = Field(ge=1, le=100)
    lr: float = Field(gt=0, lt=10)
    batch_size: int = Field(ge=1)
    seed: int = Field(ge=0)
    exclude: bool


class Params(TrainConfig):
    """Everything in ``params.yaml``: the training settings at the top level (so that
    ``dvc exp run -S lr=1e-4`` works verbatim) and a section per other stage."""

    data: DataParams
    preprocess: PreprocessParams
    evaluate: EvaluateParams
    export: ExportParams
    drift_baseline: DriftBaselineParams
    audit: AuditParams

    def audit_training(self) -> TrainConfig:
        """What the audit trains on each fold without pretrained weights: the configured
        network, briefly, with the audit's own epochs, lr, batch size and seed (so an
        experiment on training's keys does not rerun the audit), AdamW with a cosine schedule,
        and no augmentation, label smoothing or weight average (a short run gains nothing from
        them; measured in docs/audit.md)."""
        return self.training().replace(
            epochs=self.audit.epochs,
            lr=self.audit.lr,
            batch_size=self.audit.batch_size,
            weight_decay=0.05,
            optimizer="adamw",
            schedule="cosine",
            grad_clip=0.0,
            seed=self.audit.seed,
            warmup_epochs=0,
            label_smoothing=0.0,
            ema_decay=0.0,
            early_stopping=0,
            keep_epoch="best",  # as it always did: its monitor is training rows
            class_balance="none",
            compile=False,
            processes=1,
            augment={
                name: False if name == "hflip" else "none" if name == "policy" else 0
                for name in type(self.augment).model_fields
            },
            mixup=0.0,
            cutmix=0.0,
            finetune="full",
            feature_views=1,
            freeze="none",
            freeze_epochs=0,
            layer_decay=0.0,
            drop_path=0.0,
            accumulate=1,
        )


def load_params(path: Path = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate ``params.yaml``.

    Raises:
        ParamsError: naming the file and every offending key.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys to values at the top level")
    return parse_params(raw, source=str(path))


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate an already-parsed params mapping; see :func:`load_params`."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(error, raw) for error in exc.errors()]
        raise ParamsError(f"{source}: " + "; ".join(problems)) from None


def _describe(error: Any, raw: dict[str, Any]) -> str:
    location = [str(part) for part in error["loc"]]
    key = ".".join(location)
    message = error["msg"].removeprefix("Value error, ")
    if not location:  # a check across keys: its message names them itself
        return str(message)
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'{_suggestion(location)}"
    if error["type"] == "missing":
        return f"missing key '{key}'"
    value = _lookup(raw, location)
    shown = f" (got {value!r})" if value is not _NOTHING and not isinstance(value, dict) else ""
    return f"'{key}': {message}{shown}"


_NOTHING = object()


def _lookup(raw: Any, location: list[str]) -> Any:
    for part in location:
        if not isinstance(raw, dict) or part not in raw:
            return _NOTHING
        raw = raw[part]
    return raw


def _suggestion(location: list[str]) -> str:
    model: type[BaseModel] = Params
    for part in location[:-1]:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(location[-1], list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
