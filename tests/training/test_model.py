import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from imgpipe.errors import ImgpipeError
from imgpipe.training.model import (
    Classifier,
    ModelMeta,
    channel_statistics,
    check_image_size,
    create_network,
    load_checkpoint,
    pretrained_normalisation,
    save_checkpoint,
)


def test_checkpoint_round_trip_carries_everything(
    tiny_model: tuple[Classifier, ModelMeta], tmp_path: Path
) -> None:
    model, meta = tiny_model
    save_checkpoint(tmp_path / "model.pt", model, meta)
    loaded, loaded_meta = load_checkpoint(tmp_path / "model.pt")
    assert loaded_meta == meta
    images = torch.randint(0, 255, (3, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
        logits, embedding = loaded.forward_with_embedding(images)
    torch.testing.assert_close(logits, model(images))
    assert embedding.shape[0] == 3


def test_a_channels_last_network_saves_the_same_bytes_as_one_as_built(
    tiny_model: tuple[Classifier, ModelMeta], tmp_path: Path
) -> None:
    model, meta = tiny_model
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    for folder, network in (("built", model), ("channels_last", channels_last)):
        (tmp_path / folder).mkdir()
        save_checkpoint(tmp_path / folder / "model.pt", network, meta)
    built, other = (tmp_path / f / "model.pt" for f in ("built", "channels_last"))
    assert built.read_bytes() == other.read_bytes()


def test_unknown_architecture_is_named() -> None:
    with pytest.raises(ImgpipeError, match="timm has no model named 'resnet_typo'"):
        create_network("resnet_typo", 2, 1)


def test_a_model_that_shrinks_the_images_to_nothing_is_named_before_training() -> None:
    from imgpipe.training.loop import train_classifier
    from tests.conftest import make_split, train_config

    split = make_split(4, size=28)
    with pytest.raises(ImgpipeError, match=r"test_convnext cannot take 28 px images.*image_size"):
        train_classifier(split, split, train_config(model="test_convnext"))


def test_the_image_size_check_leaves_the_network_as_it_was() -> None:
    torch.manual_seed(0)
    net = create_network("test_resnet", 2, 1).train()
    before = copy.deepcopy(net.state_dict())
    state = torch.get_rng_state()
    check_image_size(net, "test_resnet", 1, 28)
    assert net.training and torch.equal(torch.get_rng_state(), state)
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, before[name]), name  # running statistics untouched


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ImgpipeError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_channel_statistics_match_numpy() -> None:
    images = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    mean, std = channel_statistics(images, chunk=7)
    scaled = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, scaled.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, scaled.std(0), atol=1e-6)


def test_pretrained_normalisation_is_what_the_weights_learnt_on() -> None:
    net = create_network("resnet18", 4, 3)  # timm's config: ImageNet's mean and std
    assert pretrained_normalisation(net, 3) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    # one channel: the averages, as timm's grey first convolution sums the RGB filters
    assert pretrained_normalisation(net, 1) == ([0.449], [0.226])
    with pytest.raises(ImgpipeError, match="has 3 channels, the images 4; set normalise: data"):
        pretrained_normalisation(net, 4)
    setattr(net, "pretrained_cfg", {"architecture": "custom"})  # noqa: B010 (typed as a tensor)
    with pytest.raises(ImgpipeError, match="custom names no pretrained mean/std"):
        pretrained_normalisation(net, 3)


def test_local_weights_file_is_loaded_with_channels_and_head_adapted(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = timm.create_model("test_resnet", num_classes=1000, in_chans=3)
    state = source.state_dict()
    for path in (tmp_path / "w.pth", tmp_path / "w.safetensors"):
        if path.suffix == ".pth":
            torch.save(state, path)
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        net = create_network("test_resnet", num_classes=10, channels=1, pretrained=str(path))
        loaded = net.state_dict()
        body = [k for k in state if not k.startswith(("fc.", "head", "conv1", "stem"))]
        assert body and all(torch.equal(loaded[k], state[k]) for k in body)
        first = next(k for k in state if k.endswith("weight") and state[k].dim() == 4)
        # RGB filters summed into one grey channel, as timm adapts them
        assert torch.allclose(loaded[first], state[first].sum(1, keepdim=True))
        assert isinstance(net, timm.models.ResNet)  # test_resnet is a timm ResNet
        classifier = net.get_classifier()
        assert isinstance(classifier, torch.nn.Linear) and classifier.out_features == 10


def test_missing_or_mismatched_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImgpipeError, match=r"weights file .*nothing\.pth not found"):
        create_network("test_resnet", 10, 1, pretrained=str(tmp_path / "nothing.pth"))
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ImgpipeError, match="does not fit test_resnet"):
        create_network("test_resnet", 10, 1, pretrained=str(tmp_path / "other.pth"))
