"""The training settings: one frozen, validated object that the training code takes whole.

Its fields are the top-level keys of ``params.yaml`` (so ``dvc exp run -S lr=1e-4`` works
verbatim); :class:`~imgpipe.params.Params` extends it with the other stages' sections. Adding a
training setting means: the key in ``params.yaml``, a field here, the key in ``dvc.yaml``'s
train ``params:`` list (a test checks the last against this class).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from imgpipe.io import file_sha256


class FrozenSettings(BaseModel):
    """Unknown keys are refused and nothing can be changed after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes`` (nested sections as dicts of their changes)."""
        data = self.model_dump()
        for key, value in changes.items():
            data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
        return self.model_validate(data)


class AugmentConfig(FrozenSettings):
    """Per-image augmentation of training batches (kornia, on the training device); zeros,
    ``false`` and ``none`` switch each part off."""

    degrees: float = Field(ge=0, le=180)  # rotation range, +/- degrees
    translate: float = Field(ge=0, lt=1)  # shift range, fraction of the side
    scale: float = Field(ge=0, lt=1)  # zoom range, +/- fraction
    hflip: bool  # random horizontal flips
    crop_scale: float = Field(ge=0, le=1)  # RandomResizedCrop: smallest area share kept; 0 off
    policy: Literal["none", "randaugment", "trivialaugment", "autoaugment"]
    color_jitter: float = Field(ge=0, lt=1)  # brightness/contrast/saturation +/- this; 0 off
    erasing: float = Field(ge=0, le=1)  # probability of erasing a random rectangle

    @property
    def enabled(self) -> bool:
        return bool(
            self.degrees
            or self.translate
            or self.scale
            or self.hflip
            or self.crop_scale
            or self.policy != "none"
            or self.color_jitter
            or self.erasing
        )


class TrainConfig(FrozenSettings):
    """Everything that decides how the train stage trains (see ``params.yaml`` for each key)."""

    model: str = Field(min_length=1)
    pretrained: bool | str  # a str is a local weights file
    # auto: a pretrained network's own mean/std, else the training images'; data: theirs always
    normalise: Literal["auto", "data"]
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0, lt=10)
    weight_decay: float = Field(ge=0)
    warmup_epochs: float = Field(ge=0)
    label_smoothing: float = Field(ge=0, lt=1)
    ema_decay: float = Field(ge=0, lt=1)
    optimizer: Literal["adamw", "sgd"]
    schedule: Literal["cosine", "onecycle"]
    grad_clip: float = Field(ge=0)
    early_stopping: int = Field(ge=0)
    keep_epoch: Literal["last", "best"]  # whose weights train keeps
    class_balance: Literal["none", "loss", "sampler"]
    compile: bool
    processes: int = Field(ge=1, le=64)
    seed: int = Field(ge=0)
    device: Literal["auto", "cpu", "cuda"]
    augment: AugmentConfig
    mixup: float = Field(ge=0)  # alpha of batch-level mixup; 0 off
    cutmix: float = Field(ge=0)  # alpha of batch-level cutmix; 0 off (both: one or the other)
    # head: the classifier alone on cached frozen features; lp-ft: that first, then full
    finetune: Literal["full", "head", "lp-ft"]
    feature_views: int = Field(ge=1, le=64)  # finetune head: cached views per training image
    freeze: Literal["none", "backbone"] | Annotated[int, Field(ge=0)]  # frozen leading groups
    freeze_epochs: int = Field(ge=0)  # train the head alone for this many epochs first
    layer_decay: float = Field(ge=0, le=1)  # lr x decay^(depth from the head); 0 off
    drop_path: float = Field(ge=0, lt=1)  # stochastic depth rate (timm drop_path_rate)
    accumulate: int = Field(ge=1, le=1024)  # split each batch into this many sequential parts

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})"
            )
        if self.freeze_epochs >= self.epochs:
            raise ValueError(
                f"freeze_epochs ({self.freeze_epochs}) must be smaller than epochs ({self.epochs}),"
                " or nothing but the head is ever trained (that is finetune: head)"
            )
        if self.finetune == "head" and (self.mixup or self.cutmix):
            raise ValueError(
                "finetune: head trains on cached features, which mixup and cutmix cannot mix; "
                "set mixup and cutmix to 0 (augmented views: feature_views)"
            )
        return self

    def training(self) -> TrainConfig:
        """Just the training settings (a :class:`~imgpipe.params.Params` holds more)."""
        return TrainConfig.model_validate(self.model_dump(include=set(TrainConfig.model_fields)))

    def fingerprint(self) -> str:
        """A digest of every training setting, and of the weights file's content when
        ``pretrained`` names one: two runs with equal fingerprints train alike."""
        digest = hashlib.sha256(self.training().model_dump_json().encode())
        if isinstance(self.pretrained, str) and Path(self.pretrained).is_file():
            digest.update(file_sha256(Path(self.pretrained)).encode())
        return digest.hexdigest()
