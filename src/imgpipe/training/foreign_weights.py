"""Pretrained weights saved by another project, renamed to timm's names: ``imgpipe
convert-weights``. Without hub access, weights often come from elsewhere (a PyPI wheel, a
paper's release) under that project's key names; where the network is the same, its tensors
come in the same order with the same shapes, so they are paired by position, and every pair is
checked before anything is written."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch

from imgpipe.errors import ImgpipeError
from imgpipe.io import atomic_path

# Keys of a training checkpoint that hold its state dict, tried in this order.
WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "module")
# The last part of a tensor's name that says what it is, in most projects' naming; a pair whose
# names both end in one of these must end in the same one.
ROLES = {"weight", "bias", "running_mean", "running_var"}
# Batch-norm step counters: some projects save them and some do not; the model's own are kept.
COUNTER = "num_batches_tracked"


def convert_weights(source: Path, architecture: str, destination: Path) -> int:
    """Write ``source``'s tensors to ``destination`` under the names of timm's
    ``architecture`` (with its default head, as timm's own pretrained files have it), paired by
    position; returns how many were paired. ``destination`` ending in ``.safetensors`` is
    written in that format, anything else by ``torch.save``.

    Raises:
        ImgpipeError: the file cannot be read as a state dict, timm has no such model, or the
            tensors do not line up (their count, or the first pair whose shapes or kinds differ).
    """
    if not timm.is_model(architecture):
        raise ImgpipeError(f"--model: timm has no model named '{architecture}'")
    theirs = read_state_dict(source)
    target = timm.create_model(architecture, pretrained=False).state_dict()
    converted = pair_by_position(theirs, target, source, architecture)
    with atomic_path(destination) as partial:  # an interrupted write leaves no half a file
        if destination.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({name: t.contiguous() for name, t in converted.items()}, str(partial))
        else:
            torch.save(converted, partial)
    return sum(not name.endswith(COUNTER) for name in converted)


def read_state_dict(source: Path) -> Mapping[str, torch.Tensor]:
    """The state dict in ``source`` (a ``torch.save`` file holding a state dict, or a
    checkpoint with one under a key of :data:`WRAPPERS`), loaded on the CPU without running any
    code from the file, in the order it was saved in.

    Raises:
        ImgpipeError: missing, unreadable, a ``.safetensors`` file (which keeps no order), or
            not a mapping of names to tensors.
    """
    if not source.is_file():
        raise ImgpipeError(f"{source}: weights file not found")
    if source.suffix == ".safetensors":  # the format stores its tensors sorted by name
        raise ImgpipeError(
            f"{source}: a .safetensors file keeps no order of its tensors, so they cannot be "
            "paired by position; convert the project's .pth or .bin file, or rename the keys"
        )
    try:
        loaded: Any = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # each format fails its own way; all mean "not readable"
        message = str(error).strip()
        first = message.split(". ")[0].splitlines()[0][:200] if message else ""
        raise ImgpipeError(
            f"{source}: not a weights file that loads without running code from it ({first}); "
            "a checkpoint that pickles more than tensors (training arguments, classes) loads "
            "only beside its own code: save its state dict alone there, "
            "torch.save(checkpoint['state_dict'], 'plain.pth')"
        ) from None
    while isinstance(loaded, Mapping) and not _all_tensors(loaded):
        inner = next(
            (loaded[key] for key in WRAPPERS if isinstance(loaded.get(key), Mapping)), None
        )
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping) or not loaded or not _all_tensors(loaded):
        raise ImgpipeError(
            f"{source}: not a state dict (a mapping of names to tensors, or a checkpoint "
            f"holding one under {', '.join(WRAPPERS)})"
        )
    return loaded


def pair_by_position(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    source_name: Path | str,
    architecture: str,
) -> OrderedDict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s names, in ``target``'s dtypes, paired in order;
    batch-norm counters are left out of the pairing and taken from ``target``.

    Raises:
        ImgpipeError: the counts differ, or a pair's shapes or kinds (:data:`ROLES`) differ;
            the message names the first such pair.
    """
    theirs = [(name, t) for name, t in source.items() if not name.endswith(COUNTER)]
    ours = [(name, t) for name, t in target.items() if not name.endswith(COUNTER)]
    for position, ((their_name, their), (our_name, our)) in enumerate(
        zip(theirs, ours, strict=False)
    ):
        roles = {their_name.rsplit(".", 1)[-1], our_name.rsplit(".", 1)[-1]}
        if their.shape != our.shape or (roles <= ROLES and len(roles) > 1):
            raise ImgpipeError(
                f"{source_name} does not line up with {architecture}: tensor {position + 1} is "
                f"{their_name} {list(their.shape)} there, {our_name} {list(our.shape)} in "
                f"timm's {architecture}; {_advice(len(theirs), len(ours))}"
            )
    if len(theirs) != len(ours):
        raise ImgpipeError(
            f"{source_name} has {len(theirs)} tensors and timm's {architecture} {len(ours)} "
            f"(batch-norm counters not counted), the first {min(len(theirs), len(ours))} alike; "
            f"{_advice(len(theirs), len(ours))}"
        )
    paired = {
        name: their.to(our.dtype) for (name, our), (_, their) in zip(ours, theirs, strict=True)
    }
    return OrderedDict((name, paired.get(name, tensor)) for name, tensor in target.items())


def _all_tensors(mapping: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def _advice(theirs: int, ours: int) -> str:
    what = "another network, or this one in another order" if theirs == ours else "another network"
    return (
        f"the file holds {what}; name the timm model it was trained as "
        "(timm.list_models('*part of its name*') lists them), or rename its keys yourself"
    )
