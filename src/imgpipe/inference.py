"""Running a trained :class:`~imgpipe.model.Classifier` over a split: the device it runs on,
batches gathered from the split's arrays, and the probabilities (train validates with them,
evaluate scores with them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)

from imgpipe.errors import ImgpipeError
from imgpipe.model import Classifier
from imgpipe.splits import SplitArrays


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is an error. On CUDA,
    the process with ``local_rank`` n of a torchrun job takes GPU n."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ImgpipeError("device: 'cuda' was asked for but torch sees no CUDA device")
    return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)


def autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA; full precision on CPU (bf16 is slower on most CPUs)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def gather_batch(
    split: SplitArrays, rows: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (``N x C x H x W`` uint8; channels-last on CUDA) and labels of ``rows``."""
    images = torch.from_numpy(np.ascontiguousarray(split.images[rows])).permute(0, 3, 1, 2)
    labels = torch.from_numpy(split.labels[rows])
    if device.type == "cuda":
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return images, labels.to(device, non_blocking=True)
    return images.contiguous(), labels


@torch.no_grad()
def predict_split(
    model: Classifier,
    split: SplitArrays,
    batch_size: int,
    device: torch.device,
    views: Sequence[Callable[[torch.Tensor], torch.Tensor]] = (),
) -> torch.Tensor:
    """Class probabilities for every image of ``split``, in order (float32, on the CPU);
    with ``views`` (test-time augmentation), the mean of the probabilities of each view."""
    model.eval()
    outputs = []
    for start in range(0, len(split), batch_size):
        rows = np.arange(start, min(start + batch_size, len(split)))
        images, _ = gather_batch(split, rows, device)
        with autocast(device):
            if views:
                mean = sum(model(view(images)).float().softmax(1) for view in views) / len(views)
                outputs.append(torch.as_tensor(mean).cpu())
            else:
                outputs.append(model(images).float().softmax(1).cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, len(split.classes))


def loss_and_accuracy(probabilities: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of class probabilities against ``labels``."""
    targets = torch.from_numpy(labels)
    loss = F.nll_loss(probabilities.clamp_min(1e-12).log(), targets).item()
    accuracy = (probabilities.argmax(1) == targets).float().mean().item()
    return float(loss), float(accuracy)


def evaluate_split(
    model: Classifier, split: SplitArrays, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split``."""
    return loss_and_accuracy(predict_split(model, split, batch_size, device), split.labels)
