"""``imgpipe convert-weights``: another project's weights under timm's names, paired by
position, and a clear error where they do not line up."""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch

from imgpipe.cli import main
from imgpipe.errors import ImgpipeError
from imgpipe.training.foreign_weights import convert_weights
from imgpipe.training.model import create_network

ARCHITECTURE = "test_resnet"


def foreign_state_dict(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """timm's ``test_resnet`` tensors with random values, under another project's names
    (``features.N.<role>``) and without the batch-norm counters, as some projects save them."""
    torch.manual_seed(seed)
    ours = timm.create_model(ARCHITECTURE).state_dict()
    foreign = OrderedDict()
    for position, (name, tensor) in enumerate(ours.items()):
        if name.endswith("num_batches_tracked"):
            continue
        role = name.rsplit(".", 1)[-1]
        value = torch.rand_like(tensor) + 0.1 if role == "running_var" else torch.randn_like(tensor)
        foreign[f"features.{position}.{role}"] = value
    return foreign


def test_converted_weights_load_as_the_pretrained_file(tmp_path: Path) -> None:
    foreign = foreign_state_dict()
    source = tmp_path / "theirs.pth"
    torch.save({"epoch": torch.tensor(90), "state_dict": foreign}, source)  # a checkpoint
    out = tmp_path / "weights" / "test_resnet.pth"

    assert convert_weights(source, ARCHITECTURE, out) == len(foreign)

    net = create_network(ARCHITECTURE, 3, 3, pretrained=out)
    head = f"{net.pretrained_cfg['classifier']}."  # type: ignore[index]  # replaced by a 3-class head, as for any file
    backbone = [
        (name, tensor)
        for name, tensor in net.state_dict().items()
        if not name.endswith("num_batches_tracked") and not name.startswith(head)
    ]
    theirs = list(foreign.values())[: len(backbone)]
    assert len(backbone) == len(foreign) - 2  # all but the foreign head's weight and bias
    for (name, tensor), their in zip(backbone, theirs, strict=True):
        assert torch.equal(tensor, their), name


def test_safetensors_out_but_not_in(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    foreign = foreign_state_dict(1)
    source = tmp_path / "theirs.pth"
    torch.save(foreign, source)
    out = tmp_path / "ours.safetensors"
    convert_weights(source, ARCHITECTURE, out)
    converted = load_file(str(out))
    first = next(iter(timm.create_model(ARCHITECTURE).state_dict()))
    assert torch.equal(converted[first], foreign["features.0.weight"])
    assert "bn1.num_batches_tracked" in converted  # the model's own counters are kept
    # safetensors stores tensors sorted by name ("features.10" before "features.2"): there is
    # no order left to pair by
    save_file(dict(foreign), str(tmp_path / "theirs.safetensors"))
    with pytest.raises(ImgpipeError, match="keeps no order"):
        convert_weights(tmp_path / "theirs.safetensors", ARCHITECTURE, tmp_path / "x.pth")


def test_tensors_that_do_not_line_up_are_named(tmp_path: Path) -> None:
    foreign = foreign_state_dict()
    names = list(foreign)

    def message(state: OrderedDict[str, torch.Tensor]) -> str:
        torch.save(state, tmp_path / "theirs.pth")
        with pytest.raises(ImgpipeError) as error:
            convert_weights(tmp_path / "theirs.pth", ARCHITECTURE, tmp_path / "out.pth")
        assert not (tmp_path / "out.pth").exists()  # nothing half-written
        return str(error.value)

    shorter = OrderedDict(list(foreign.items())[:-1])
    count = len(foreign)
    assert f"has {count - 1} tensors and timm's test_resnet {count}" in message(shorter)

    reshaped = OrderedDict(foreign)
    reshaped[names[0]] = torch.zeros(1, 2, 3, 3)
    first = next(iter(timm.create_model(ARCHITECTURE).state_dict()))
    assert f"tensor 1 is {names[0]} [1, 2, 3, 3] there, {first} [" in message(reshaped)

    # A batch norm's weight and bias swapped: the same shapes, but not the same kind of tensor.
    swapped_items = list(foreign.items())
    swapped_items[1], swapped_items[2] = swapped_items[2], swapped_items[1]
    text = message(OrderedDict(swapped_items))
    assert f"tensor 2 is {names[2]} [" in text and ".weight [" in text


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ([torch.zeros(2)], "not a state dict"),
        ({"config": {"depth": 18}}, "not a state dict"),
        (argparse.Namespace(lr=0.1), "loads without running code from it"),
    ],
)
def test_a_file_without_a_state_dict_is_refused(
    tmp_path: Path, content: object, expected: str
) -> None:
    source = tmp_path / "theirs.pth"
    torch.save(content, source)
    with pytest.raises(ImgpipeError, match=expected):
        convert_weights(source, ARCHITECTURE, tmp_path / "out.pth")


def test_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    source, out = tmp_path / "theirs.pth", tmp_path / "ours.pth"
    torch.save(foreign_state_dict(), source)
    assert main(["convert-weights", str(source), "--model", ARCHITECTURE, "--out", str(out)]) == 0
    assert f"-S pretrained={out}" in capsys.readouterr().out
    assert main(["convert-weights", str(source), "--model", "resnet18", "--out", str(out)]) == 2
    assert "does not line up with resnet18: tensor 1 is features.0.weight" in caplog.text
