"""Transfer-learning controls: frozen groups and their batch norms, the head-first warm-up,
layer-wise lr decay, stochastic depth, gradient accumulation and the frozen-feature head."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from imgpipe.data.splits import SplitArrays
from imgpipe.errors import ImgpipeError
from imgpipe.training.distributed import Processes
from imgpipe.training.loop import build_network, build_trainer, train_classifier, train_step
from imgpipe.training.model import channel_statistics, create_network
from imgpipe.training.resume import Progress
from imgpipe.training.transfer import (
    frozen_in_epoch,
    frozen_parameter_names,
    head_parameter_names,
)
from tests.conftest import make_split
from tests.conftest import train_config as tiny_config
from tests.training.test_loop import CrashAtEpoch, CrashError


def initial_state(**changes: object) -> dict[str, torch.Tensor]:
    trainer = build_trainer(
        tiny_config(**changes), make_split(24, seed=1), make_split(8, seed=2), Processes()
    )
    return {k: v.clone() for k, v in trainer.network.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in before.items() if not torch.equal(v, after[k].to(v.device))}


def test_a_pretrained_network_is_normalised_as_it_was_pretrained(weights: str) -> None:
    train = make_split(24, seed=1)
    statistics = channel_statistics(train.images)
    assert statistics != ([0.5], [0.5])  # the pattern images are not test_resnet's config
    cpu = torch.device("cpu")
    for changes, expected in (
        ({"pretrained": weights}, ([0.5], [0.5])),  # auto: test_resnet's pretrained_cfg
        ({"pretrained": weights, "normalise": "data"}, statistics),
        ({}, statistics),  # from scratch, auto: the training images'
    ):
        network, mean, std = build_network(tiny_config(**changes), train, cpu)
        assert (mean, std) == expected
        assert network.mean.flatten().tolist() == pytest.approx([255 * v for v in mean])


def test_backbone_frozen_keeps_weights_and_batch_norm_statistics(weights: str) -> None:
    before = initial_state(pretrained=weights, freeze="backbone")
    result = train_classifier(
        make_split(24, seed=1),
        make_split(8, seed=2),
        tiny_config(pretrained=weights, freeze="backbone"),
    )
    moved = changed(before, result.model.state_dict())
    assert moved == {"net.fc.weight", "net.fc.bias"}  # running means/vars of BN included


def test_freezing_the_first_groups(weights: str) -> None:
    net = create_network("test_resnet", 2, 1)
    stem = frozen_parameter_names(net, 1)
    two = frozen_parameter_names(net, 2)
    assert stem and stem < two and not two & head_parameter_names(net)
    assert all(name.startswith(("conv1", "bn1")) for name in stem)
    assert any(name.startswith("layer1") for name in two)
    with pytest.raises(ImgpipeError, match="freeze: 5 would freeze all 5 groups"):
        frozen_parameter_names(net, 5)
    before = initial_state(pretrained=weights, freeze=2)
    result = train_classifier(
        make_split(24, seed=1), make_split(8, seed=2), tiny_config(pretrained=weights, freeze=2)
    )
    moved = changed(before, result.model.state_dict())
    assert not any(name.startswith(("net.conv1", "net.bn1", "net.layer1")) for name in moved)
    assert any(name.startswith("net.layer4") for name in moved)


def test_the_freeze_schedule_names_what_each_epoch_keeps_fixed() -> None:
    net = create_network("test_resnet", 2, 1)
    backbone = frozenset(frozen_parameter_names(net, "backbone"))
    first_two = frozenset(frozen_parameter_names(net, 2))
    assert backbone and first_two and first_two < backbone

    def frozen(epoch: int, **settings: object) -> frozenset[str]:
        chosen: dict[str, object] = {"finetune": "full", "freeze": "none", "freeze_epochs": 0}
        return frozen_in_epoch(net, epoch, **(chosen | settings))  # type: ignore[arg-type]

    assert frozen(1) == frozen(5) == frozenset()
    assert frozen(1, freeze="backbone") == frozen(5, freeze="backbone") == backbone
    assert frozen(3, freeze=2) == first_two
    # freeze_epochs: the head alone warms up (epochs 1 and 2), then `freeze` takes over.
    warm_up = {"freeze_epochs": 2, "freeze": 2}
    assert [frozen(e, **warm_up) for e in (1, 2, 3, 4)] == [backbone] * 2 + [first_two] * 2
    assert frozen(3, freeze_epochs=2) == frozenset()
    # finetune: head trains the classifier module itself: nothing in it is frozen.
    assert frozen(1, finetune="head", freeze="backbone", freeze_epochs=2) == frozenset()
    assert all(p.requires_grad for p in net.parameters())  # it only reads the network


def test_freeze_epochs_train_the_head_alone_first(weights: str, tmp_path: Path) -> None:
    config = tiny_config(pretrained=weights, freeze_epochs=2)
    before = initial_state(pretrained=weights, freeze_epochs=2)
    train, val = make_split(24, seed=1), make_split(8, seed=2)
    with pytest.raises(CrashError):  # after epoch 2's state: the head alone has moved
        train_classifier(
            train, val, config, metric_logger=CrashAtEpoch(3), state_path=tmp_path / "state.pt"
        )
    saved = torch.load(tmp_path / "state.pt", weights_only=True)["model"]
    assert changed(before, saved) == {"net.fc.weight", "net.fc.bias"}
    result = train_classifier(train, val, config)  # then everything trains
    assert any(name.startswith("net.layer1") for name in changed(before, result.model.state_dict()))


def test_layer_decay_scales_the_learning_rate_towards_the_stem() -> None:
    trainer = build_trainer(
        tiny_config(layer_decay=0.5), make_split(24, seed=1), make_split(8, seed=2), Processes()
    )
    scales = sorted({group["lr_scale"] for group in trainer.optimizer.param_groups})
    assert scales[-1] == 1.0 and len(scales) > 3
    assert all(b == pytest.approx(a * 2) for a, b in itertools.pairwise(scales))
    trainer.schedule.step(20)
    for group in trainer.optimizer.param_groups:
        top = max(g["lr"] for g in trainer.optimizer.param_groups)
        assert group["lr"] == pytest.approx(top * group["lr_scale"])


def test_drop_path_reaches_timm_or_is_refused_by_name() -> None:
    net = create_network("test_resnet", 2, 1, drop_path=0.2)
    assert any(getattr(m, "drop_prob", 0) == pytest.approx(0.2) for m in net.modules())
    with pytest.raises(ImgpipeError, match="drop_path: densenet121 has no stochastic depth"):
        create_network("densenet121", 2, 1, drop_path=0.1)


def test_accumulating_parts_takes_the_same_step() -> None:
    train = make_split(24, seed=1)
    rows = torch.arange(16).numpy()
    after = []
    for parts in (1, 4):
        config = tiny_config(
            accumulate=parts,
            ema_decay=0,
            optimizer="sgd",
            weight_decay=0,
            augment={"degrees": 0, "translate": 0},
        )
        trainer = build_trainer(config, train, make_split(8, seed=2), Processes())
        trainer.set_trainable(1)
        trainer.model.eval()  # batch norm by running statistics: the parts then add up exactly
        train_step(trainer, rows, Progress())
        after.append(trainer.model.state_dict())
    for name, tensor in after[0].items():
        torch.testing.assert_close(after[1][name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def bright_and_dark(per_class: int, seed: int) -> SplitArrays:
    """Classes a pooled feature vector separates (the left/right patterns it cannot)."""
    rng = np.random.default_rng(seed)
    images = np.concatenate(
        [rng.integers(lo, lo + 60, (per_class, 32, 32, 1), dtype=np.uint8) for lo in (20, 170)]
    )
    labels = np.repeat(np.arange(2), per_class).astype(np.int64)
    return SplitArrays(images, labels, ["dark", "bright"], [f"{i}.png" for i in range(len(labels))])


def test_head_fine_tuning_trains_on_cached_features(
    weights: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train, val = bright_and_dark(24, seed=1), bright_and_dark(8, seed=2)
    cache = tmp_path / "features"
    config = tiny_config(pretrained=weights, finetune="head", feature_views=2, epochs=6)
    before = build_trainer(config.replace(finetune="full"), train, val, Processes())
    before_state = {k: v.clone() for k, v in before.network.state_dict().items()}
    first = train_classifier(train, val, config, feature_cache=cache)
    assert changed(before_state, first.model.state_dict()) == {"net.fc.weight", "net.fc.bias"}
    assert first.kept["val_accuracy"] >= 0.9
    stored = sorted(cache.glob("*.npz"))
    # train's and val's unaugmented features, and train's augmented view
    assert [path.name.split("-")[0] for path in stored] == ["split", "split", "views"]
    written = [path.stat().st_mtime_ns for path in stored]
    with caplog.at_level(logging.INFO):  # the head's own settings reuse the features
        train_classifier(train, val, config.replace(lr=1e-3), feature_cache=cache)
    assert [path.stat().st_mtime_ns for path in sorted(cache.glob("*.npz"))] == written
    assert any("augmented views from" in r.getMessage() for r in caplog.records)
    train_classifier(train, val, config.replace(feature_views=3), feature_cache=cache)
    assert len(list(cache.glob("*.npz"))) == 4  # other views: other features, the same splits'
    train_classifier(train, val, config.replace(feature_views=1), feature_cache=cache)
    assert len(list(cache.glob("*.npz"))) == 4  # one view: the splits' entries alone


def test_head_mode_refuses_batch_mixing() -> None:
    with pytest.raises(ValueError, match="finetune: head trains on cached features"):
        tiny_config(finetune="head", mixup=0.2)
