"""Augmentation of training batches on the training device, drawn per image: kornia's
augmentation module for geometry, crops, colour, erasing and the automatic policies, and
torchvision's MixUp/CutMix for mixing pairs of images and their labels.

Every part draws its parameters for each image of a batch in one call per batch (a Python
call per image halved CPU training throughput, see the README's benchmarks), from torch's
seeded generator, so a training run stays reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import kornia.augmentation as K  # noqa: N812 (kornia's own convention)
import torch
from kornia.augmentation.auto import AutoAugment, RandAugment, TrivialAugment
from kornia.augmentation.auto.autoaugment.autoaugment import imagenet_policy
from kornia.augmentation.auto.rand_augment.rand_augment import (
    default_policy as rand_augment_policy,
)
from kornia.augmentation.auto.trivial_augment.trivial_augment import (
    default_policy as trivial_augment_policy,
)
from torch import nn
from torchvision.transforms import v2

from imgpipe.training.settings import AugmentConfig

RAND_AUGMENT_OPERATIONS = 2  # operations per image (timm's and torchvision's default)
RAND_AUGMENT_MAGNITUDE = 9  # of 30 (timm's rand-m9 recipe)
COLOUR_ONLY = "color"  # the policies' saturation operation: meaningless for grey images


def build_augmentation(
    config: AugmentConfig, channels: int
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The batch transform ``config`` asks for (uint8 ``N x C x H x W`` in, float in
    ``[0, 255]`` out, same size); None when everything is switched off."""
    if not config.enabled:
        return None
    return BatchAugment(config, channels)


def build_mixing(
    mixup: float, cutmix: float, classes: int
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """Batch-level MixUp and/or CutMix (one of the two per batch when both are on): images
    and class indices in, mixed images and soft targets (class probabilities) out."""
    mixers: list[nn.Module] = []
    if mixup:
        mixers.append(v2.MixUp(alpha=mixup, num_classes=classes))
    if cutmix:
        mixers.append(v2.CutMix(alpha=cutmix, num_classes=classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


class BatchAugment(nn.Module):
    """Crop, flip, affine, policy, colour, erasing: the order of timm's and torchvision's
    training recipes. Each image gets its own random parameters."""

    def __init__(self, config: AugmentConfig, channels: int) -> None:
        super().__init__()
        steps: list[nn.Module] = []
        if config.crop_scale:
            # Resized back to the stored size, which the batch's own shape gives.
            steps.append(_ResizedCrop(config.crop_scale))
        if config.hflip:
            steps.append(K.RandomHorizontalFlip(p=0.5))
        if config.degrees or config.translate or config.scale:
            steps.append(
                K.RandomAffine(
                    degrees=config.degrees,
                    translate=(config.translate, config.translate) if config.translate else None,
                    scale=(1 - config.scale, 1 + config.scale) if config.scale else None,
                    padding_mode="zeros",
                    p=1.0,
                )
            )
        if config.policy != "none":
            steps.append(per_sample_policy(config.policy, channels))
        if config.color_jitter:
            jitter = config.color_jitter
            saturation = jitter if channels == 3 else 0.0
            steps.append(
                K.ColorJitter(brightness=jitter, contrast=jitter, saturation=saturation, p=1.0)
            )
        if config.erasing:
            steps.append(K.RandomErasing(p=config.erasing))
        self.steps = nn.Sequential(*steps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        augmented = cast(torch.Tensor, self.steps(images.float() / 255.0))
        return augmented.clamp_(0, 1) * 255.0


class _ResizedCrop(nn.Module):
    """kornia's RandomResizedCrop at whatever size the batch has."""

    def __init__(self, smallest: float) -> None:
        super().__init__()
        self.smallest = smallest
        self.crops: dict[tuple[int, int], nn.Module] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = (images.shape[-2], images.shape[-1])
        if size not in self.crops:
            self.crops[size] = K.RandomResizedCrop(size, scale=(self.smallest, 1.0), p=1.0)
        return cast(torch.Tensor, self.crops[size](images))


def per_sample_policy(name: str, channels: int) -> PerSamplePolicy:
    """RandAugment (2 operations at magnitude 9 of 30), TrivialAugment (one operation, random
    magnitude) or AutoAugment (one ImageNet sub-policy), drawn for every image."""
    if name == "randaugment":
        entries = _for_channels(rand_augment_policy, channels)
        operations = [RandAugment(n=1, m=RAND_AUGMENT_MAGNITUDE, policy=[e]) for e in entries]
        return PerSamplePolicy(operations, picks=RAND_AUGMENT_OPERATIONS)
    if name == "trivialaugment":
        entries = _for_channels(trivial_augment_policy, channels)
        return PerSamplePolicy([TrivialAugment(policy=[e]) for e in entries], picks=1)
    if name == "autoaugment":
        entries = _for_channels(imagenet_policy, channels)
        return PerSamplePolicy([AutoAugment(policy=[e]) for e in entries], picks=1)
    raise ValueError(f"augment.policy: unknown policy {name!r}")


def _for_channels(policy: Sequence[Any], channels: int) -> list[Any]:
    if channels == 3:
        return list(policy)
    return [entry for entry in policy if all(op[0] != COLOUR_ONLY for op in entry)]


class PerSamplePolicy(nn.Module):
    """An automatic augmentation policy whose choice of operations is drawn for each image.

    kornia's policies (like torchvision's) pick their operations once per call, for the whole
    batch. Here each image draws its own ``picks`` distinct operations; the images that drew
    the same operation go through it together (its magnitudes are still drawn per image), so
    a batch costs at most ``len(operations) x picks`` calls, however large it is.
    """

    def __init__(self, operations: Sequence[nn.Module], picks: int) -> None:
        super().__init__()
        self.operations = nn.ModuleList(operations)
        self.picks = picks

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        drawn = torch.rand(len(images), len(self.operations), device=images.device)
        choice = drawn.argsort(dim=1)[:, : self.picks]
        out = images.clone()
        for step in range(self.picks):
            for index, operation in enumerate(self.operations):
                rows = (choice[:, step] == index).nonzero().squeeze(1)
                if len(rows):
                    out[rows] = operation(out[rows])
        return out
