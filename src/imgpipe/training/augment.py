"""Augmentation of training batches on the training device, drawn per image: kornia's
augmentation module for crops, flips, colour, erasing and the automatic policies, kornia's
affine warp in closed form for rotation, shift and zoom (:class:`RandomAffine`), and
torchvision's MixUp/CutMix for mixing pairs of images and their labels.

Every part draws its parameters for each image of a batch in one call per batch (a Python
call per image halved CPU training throughput, see the README's benchmarks), from torch's
seeded generator, so a training run stays reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import kornia.augmentation as K  # noqa: N812 (kornia's own convention)
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
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
            steps.append(RandomAffine(config.degrees, config.translate, config.scale))
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


class RandomAffine(nn.Module):
    """kornia's ``RandomAffine`` (rotation, shift and isotropic zoom about the image centre,
    bilinear, zeros outside, ``align_corners=False``) with the same distribution per image,
    drawn in one call and warped by one ``affine_grid`` + ``grid_sample``.

    kornia's ``RandomAffine`` takes 1.40-1.50 ms per batch of 64 digits on a 2-core CPU (its
    parameter bookkeeping and generic 3x3 homography algebra around the warp), this 0.34-0.37
    ms: under cProfile kornia's had been 9% of a digits training step. The warp is the one
    kornia's ``warp_affine`` computes (tests/training/test_augment.py holds the two to 1e-5).
    """

    def __init__(self, degrees: float, translate: float, scale: float) -> None:
        super().__init__()
        self.degrees, self.translate, self.scale = degrees, translate, scale

    def draw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each image's angle (degrees), zoom and shift (pixels, ``x, y``), uniform within
        +/- ``degrees``, ``1 +/- scale`` and ``translate`` of the width and height."""
        height, width = images.shape[-2:]
        signed = torch.rand(len(images), 4, device=images.device) * 2 - 1
        angle = signed[:, 0] * self.degrees
        zoom = 1 + signed[:, 1] * self.scale
        sides = torch.tensor([width, height], dtype=signed.dtype, device=images.device)
        shift = signed[:, 2:] * self.translate * sides
        return angle, zoom, shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return warp_affine(images, *self.draw(images))


def warp_affine(
    images: torch.Tensor, angle: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``images`` (float ``N x C x H x W``) each rotated by ``angle`` degrees (clockwise on
    screen: y points down) and zoomed by ``zoom`` about its centre, then shifted by ``shift``
    pixels (``x, y``): kornia's ``warp_affine`` of ``get_affine_matrix2d(shift, centre, zoom,
    angle)``, bilinear, zeros outside."""
    height, width = images.shape[-2:]
    radians = angle * (math.pi / 180)
    cos, sin = torch.cos(radians), torch.sin(radians)
    # Output pixel u (from the centre) samples the source at centre + R^T (u - shift) / zoom,
    # R = [[cos, -sin], [sin, cos]].
    # grid_sample's units (align_corners=False) are pixels from the centre times 2/W and 2/H,
    # so a rotation mixes the axes in the ratio of the sides.
    aspect = height / width  # (2 / W) / (2 / H)
    shift_x, shift_y = shift[:, 0] * (2 / width), shift[:, 1] * (2 / height)
    first = [cos, sin * aspect, -(cos * shift_x + sin * aspect * shift_y)]
    second = [-sin / aspect, cos, sin / aspect * shift_x - cos * shift_y]
    theta = torch.stack([torch.stack(first, 1), torch.stack(second, 1)], 1) / zoom[:, None, None]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


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
