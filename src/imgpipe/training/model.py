"""The classifier: a timm network behind the normalisation it was trained with.

:class:`Classifier` takes ``uint8`` images (``N x C x H x W``) and does the scaling and
normalisation itself, so the checkpoint and the ONNX model carry everything a caller needs: feed
them the decoded pixels from :func:`imgpipe.data.images.decode_image` and nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from imgpipe.errors import ImgpipeError
from imgpipe.io import atomic_path

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to use a trained model later, stored with its weights."""

    architecture: str
    classes: list[str]
    image_size: int
    channels: int
    mean: list[float]  # per channel, in [0, 1] pixel units
    std: list[float]
    training: dict[str, Any] = field(default_factory=dict)  # best epoch, val metrics, ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        return cls(**data)


class Classifier(nn.Module):
    """``uint8`` images in, logits (and optionally penultimate-layer embeddings) out."""

    mean: torch.Tensor
    std: torch.Tensor
    net: Any  # a timm model: forward_features / forward_head / get_classifier

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(images))  # type: ignore[no-any-return]

    def forward_with_embedding(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.forward_features(self.normalise(images))
        embedding = self.net.forward_head(features, pre_logits=True)
        return self.net.get_classifier()(embedding), embedding


def create_network(
    architecture: str,
    num_classes: int,
    channels: int,
    pretrained: bool | str | Path = False,
    drop_path: float = 0.0,
) -> nn.Module:
    """Any timm model by name, with its head sized for ``num_classes``.

    ``pretrained=True`` loads timm's hub weights (needs network access to the hub); a path loads
    a local weights file (``.pth``/``.bin``/``.safetensors``, a state dict of the same
    architecture) through the same timm code. Either way timm adapts the first convolution to
    ``channels`` (summing or repeating the RGB filters) and a head of another size is replaced.

    ``drop_path`` is timm's stochastic depth rate, for the architectures that have it.

    Raises:
        ImgpipeError: no timm model of that name, the weights file is missing or does not fit,
            or ``drop_path`` asked of an architecture without stochastic depth.
    """
    if not timm.is_model(architecture):
        close = timm.list_models(f"*{architecture.split('_', maxsplit=1)[0]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ImgpipeError(f"model: timm has no model named '{architecture}'{hint}")
    options: dict[str, Any] = {"drop_path_rate": drop_path} if drop_path else {}
    if isinstance(pretrained, bool):
        return _timm_model(
            architecture, options, pretrained=pretrained, num_classes=num_classes, in_chans=channels
        )
    weights = Path(pretrained)
    if not weights.is_file():
        raise ImgpipeError(f"pretrained: weights file {weights} not found")
    # timm drops the file's classifier only when its head size differs from the model's default,
    # so the head is sized by timm's default first and replaced afterwards.
    try:
        net: Any = _timm_model(
            architecture,
            options,
            pretrained=True,
            in_chans=channels,
            pretrained_cfg_overlay={"file": str(weights)},
        )
    except (RuntimeError, KeyError, ValueError) as error:
        raise ImgpipeError(f"pretrained: {weights} does not fit {architecture}: {error}") from None
    net.reset_classifier(num_classes)
    return net  # type: ignore[no-any-return]


def _timm_model(architecture: str, options: dict[str, Any], **arguments: Any) -> nn.Module:
    """``timm.create_model``, naming drop_path when the architecture has no stochastic depth."""
    try:
        return timm.create_model(architecture, **arguments, **options)
    except TypeError as error:
        if options and "drop_path_rate" in str(error):
            raise ImgpipeError(
                f"drop_path: {architecture} has no stochastic depth; set drop_path: 0"
            ) from None
        raise


def check_image_size(net: nn.Module, architecture: str, channels: int, image_size: int) -> None:
    """Run ``net`` once on two blank images of the configured size, so a network that
    downsamples them to nothing fails here with the setting to change, not as a convolution
    error inside the first training step (timm's ConvNeXt needs 32 px at least: at 28 px its
    last stage's 2x2 convolution meets a 1x1 map). Evaluation mode, no gradients: no random
    numbers are drawn and no running statistics move, so the run's results do not change.

    Raises:
        ImgpipeError: naming the model and ``image_size``.
    """
    was_training = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(2, channels, image_size, image_size))
    except RuntimeError as error:
        raise ImgpipeError(
            f"model: {architecture} cannot take {image_size} px images (preprocess.image_size): "
            f"{error}; raise preprocess.image_size or choose another model"
        ) from None
    finally:
        net.train(was_training)


def pretrained_normalisation(net: nn.Module, channels: int) -> tuple[list[float], list[float]]:
    """The per-channel mean and std in [0, 1] that ``net``'s pretrained weights were trained
    with (timm's ``pretrained_cfg``, what ``timm.data.resolve_data_config`` uses): a frozen or
    fine-tuned backbone then sees its inputs scaled as in pretraining. For one channel, the RGB
    values' averages (timm's one-channel first convolution sums the RGB filters).

    Raises:
        ImgpipeError: the model's configuration has no mean/std for these channels.
    """
    config = getattr(net, "pretrained_cfg", None) or {}
    mean, std = config.get("mean"), config.get("std")
    architecture = config.get("architecture", type(net).__name__)
    if not mean or not std or len(mean) != len(std):
        raise ImgpipeError(
            f"normalise: {architecture} names no pretrained mean/std; set normalise: data"
        )
    if channels == 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    if len(mean) != channels:
        raise ImgpipeError(
            f"normalise: {architecture}'s pretrained mean/std has {len(mean)} channels, the "
            f"images {channels}; set normalise: data"
        )
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def channel_statistics(images: Any, chunk: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of ``N x H x W x C`` uint8 images, read in chunks.

    From each channel's histogram of the 256 pixel values (exact integer counts), not from
    float sums over every pixel: 6x faster (2 s against 12 s for 3,500 RGB images at 224 px),
    and memory stays at one chunk."""
    channels = images.shape[-1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk]).reshape(-1, channels)
        for channel in range(channels):
            counts[channel] += np.bincount(block[:, channel], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    pixels = counts.sum(axis=1)
    mean = (counts * values).sum(axis=1) / pixels
    squares = (counts * values**2).sum(axis=1) / pixels
    std = np.sqrt(np.maximum(squares - mean**2, 1e-12))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def save_checkpoint(path: Path, model: Classifier, meta: ModelMeta) -> None:
    """Write weights and metadata to one file, atomically."""
    # In the usual layout (the strides too): a network trained channels-last saves the same
    # bytes as one trained as built.
    state = {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in model.state_dict().items()
    }
    with atomic_path(path) as temporary:
        torch.save(
            {"format": CHECKPOINT_FORMAT, "meta": meta.to_dict(), "state_dict": state}, temporary
        )


def load_checkpoint(path: Path) -> tuple[Classifier, ModelMeta]:
    """Rebuild the model saved by :func:`save_checkpoint` (no hub access needed)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ImgpipeError(f"{path}: model checkpoint not found") from None
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ImgpipeError(f"{path}: not an imgpipe checkpoint of format {CHECKPOINT_FORMAT}")
    meta = ModelMeta.from_dict(checkpoint["meta"])
    net = create_network(meta.architecture, len(meta.classes), meta.channels)
    model = Classifier(net, meta.mean, meta.std)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), meta
