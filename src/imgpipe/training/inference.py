"""Running a trained :class:`~imgpipe.training.model.Classifier` over a split: the device it
runs on, batches gathered from the split's arrays, and the probabilities (train validates with them,
evaluate scores with them)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)

from imgpipe.data.splits import SplitArrays
from imgpipe.errors import ImgpipeError
from imgpipe.training.model import Classifier

# Set (to anything but 0) where a run must use a GPU, as the gpu-repro workflow does: a CUDA
# build that cannot reach its GPU (a driver too old for the wheel's CUDA) then fails instead of
# training on the CPU and matching CPU-made metrics.
REQUIRE_CUDA_VARIABLE = "IMGPIPE_REQUIRE_CUDA"
# torch's PyPI wheels are built for CUDA 13, which needs this NVIDIA driver or newer.
MINIMUM_DRIVER = "580"


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is an error, and so
    is any other device while ``IMGPIPE_REQUIRE_CUDA`` is set. On CUDA, the process with
    ``local_rank`` n of a torchrun job takes GPU n."""
    required = os.environ.get(REQUIRE_CUDA_VARIABLE, "0") not in ("", "0")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ImgpipeError(f"device: 'cuda' was asked for but {cuda_unavailable_reason()}")
    if required and device != "cuda":
        raise ImgpipeError(
            f"{REQUIRE_CUDA_VARIABLE} is set but this run would use device {device!r}: "
            + (
                cuda_unavailable_reason()
                if not torch.cuda.is_available()
                else "set `device` in params.yaml to auto or cuda"
            )
        )
    return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)


def cuda_unavailable_reason() -> str:
    """Why torch sees no GPU, in the words a user can act on."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} was built without CUDA"
    return (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device: is there a "
        f"GPU, and is its NVIDIA driver {MINIMUM_DRIVER} or newer (nvidia-smi shows it)?"
    )


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision a forward pass runs in: bf16 on GPUs that have it in hardware
    (Ampere and later), fp16 on older ones (T4, V100: bf16 is emulated there and slow, and fp16
    training needs a gradient scaler), none on the CPU (bf16 is slower on most CPUs)."""
    if device.type != "cuda":
        return None
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device) -> Any:
    """Autocast to :func:`autocast_dtype` (off on the CPU)."""
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


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
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Class probabilities (softmax of the logits divided by ``temperature``) for every image
    of ``split``, in order (float32, on the CPU); with ``views`` (test-time augmentation), the
    mean of the probabilities of each view."""
    model.eval()
    outputs = []
    for images in _batches(split, batch_size, device):
        with autocast(device):
            if views:
                mean = sum(
                    (model(view(images)).float() / temperature).softmax(1) for view in views
                ) / len(views)
                outputs.append(torch.as_tensor(mean).cpu())
            else:
                outputs.append((model(images).float() / temperature).softmax(1).cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, len(split.classes))


@torch.no_grad()
def predict_logits(
    model: Classifier, split: SplitArrays, batch_size: int, device: torch.device
) -> torch.Tensor:
    """The logits of every image of ``split``, in order (float32, on the CPU)."""
    model.eval()
    outputs = []
    for images in _batches(split, batch_size, device):
        with autocast(device):
            outputs.append(model(images).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, len(split.classes))


def _batches(split: SplitArrays, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """The images of ``split`` in order, ``batch_size`` at a time, on ``device``."""
    for start in range(0, len(split), batch_size):
        rows = np.arange(start, min(start + batch_size, len(split)))
        images, _ = gather_batch(split, rows, device)
        yield images


def loss_and_accuracy(probabilities: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of class probabilities against ``labels``."""
    targets = torch.from_numpy(labels)
    loss = F.nll_loss(probabilities.clamp_min(1e-12).log(), targets).item()
    accuracy = (probabilities.argmax(1) == targets).float().mean().item()
    return float(loss), float(accuracy)
