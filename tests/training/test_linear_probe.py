"""finetune: lp-ft: the linear probe fitted on the cached features and written into the
classifier, which fine-tuning then starts from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from imgpipe.errors import ImgpipeError
from imgpipe.training.distributed import Processes
from imgpipe.training.linear_probe import fit_probe, linear_head, probe_head
from imgpipe.training.loop import build_trainer, train_classifier
from tests.conftest import train_config as tiny_config
from tests.training.test_transfer import bright_and_dark, changed


def blobs(per_class: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters in 16 dimensions, features on very different scales."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 3, (classes, 16))
    features = np.concatenate([rng.normal(c, 1.0, (per_class, 16)) for c in centres])
    features *= np.geomspace(0.01, 100, 16)  # the probe standardises, then folds it back
    return features.astype(np.float32), np.repeat(np.arange(classes), per_class)


def test_the_folded_probe_is_the_fitted_regression_on_raw_features() -> None:
    from sklearn.linear_model import LogisticRegression

    (train, labels), (val, val_labels) = blobs(40, 3, seed=1), blobs(20, 3, seed=2)
    probe = fit_probe(train, labels, val, val_labels, classes=3, seed=0)
    assert probe.strength in (0.01, 0.1, 1.0) and probe.val_accuracy >= 0.95
    scale = float(np.sqrt(np.mean(np.square(train.astype(np.float64)))))
    reference = LogisticRegression(C=probe.strength, max_iter=2000, random_state=0)
    reference.fit(train.astype(np.float64) / scale, labels)
    ours = torch.from_numpy(val @ probe.weight.T + probe.bias).softmax(1).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(val / scale), atol=1e-5)


def test_the_strength_is_chosen_by_validation_loss() -> None:
    (train, labels), (val, val_labels) = blobs(40, 3, seed=1), blobs(20, 3, seed=2)
    chosen = fit_probe(train, labels, val, val_labels, classes=3, seed=0)
    # A validation split that disagrees with every label chooses the most regularised probe.
    contrary = fit_probe(train, labels, val, (val_labels + 1) % 3, classes=3, seed=0)
    assert contrary.strength == 0.01 and contrary.val_loss > chosen.val_loss


def test_binary_and_absent_classes() -> None:
    (train, labels), (val, val_labels) = blobs(40, 2, seed=1), blobs(20, 2, seed=2)
    probe = fit_probe(train, labels * 2, val, val_labels * 2, classes=3, seed=0)
    assert probe.weight.shape == (3, 16) and probe.val_accuracy >= 0.95
    assert not probe.weight[1].any()  # class 1 has no training image: never likely
    probabilities = torch.from_numpy(val @ probe.weight.T + probe.bias).softmax(1).numpy()
    assert probabilities[:, 1].max() < 1e-3
    np.testing.assert_allclose(probe.weight[0], -probe.weight[2])  # binary: symmetric rows
    with pytest.raises(ImgpipeError, match="images of 1 class"):
        fit_probe(train, np.zeros_like(labels), val, val_labels, classes=3, seed=0)


def test_a_classifier_that_is_not_one_linear_layer_is_named() -> None:
    head = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ImgpipeError, match=r"one linear layer.*use finetune: full"):
        linear_head(head, 16)
    with pytest.raises(ImgpipeError, match="over the 32 features"):
        linear_head(nn.Linear(16, 3), 32)
    (train, labels), (val, val_labels) = blobs(10, 3, seed=1), blobs(5, 3, seed=2)
    layer = nn.Linear(16, 3)
    probe = probe_head(layer, train, labels, val, val_labels, seed=0)
    assert torch.equal(layer.weight.detach(), torch.from_numpy(probe.weight).float())


def test_lp_ft_fine_tunes_the_whole_network_from_the_probe(weights: str, tmp_path: Path) -> None:
    train, val = bright_and_dark(24, seed=1), bright_and_dark(8, seed=2)
    cache = tmp_path / "features"
    # normalise: data, as the fake pretrained weights' batch-norm statistics (zero mean, unit
    # variance) were never fitted to test_resnet's 0.5/0.5 inputs: full fine-tuning in train mode
    # would start far from the probe's eval-mode features, which real weights do not.
    # One epoch at lp-ft's low lr: a second moves those statistics further, and validates worse
    # than the probe on these 16 images.
    config = tiny_config(
        pretrained=weights, normalise="data", finetune="lp-ft", epochs=1, lr=1e-4, warmup_epochs=0
    )
    random_head = build_trainer(config.replace(finetune="full"), train, val, Processes())
    start = build_trainer(config, train, val, Processes(), cache)
    entries = sorted(cache.glob("*.npz"))
    assert len(entries) == 2  # the train and val splits' features
    head_of = {k: v.clone() for k, v in start.network.state_dict().items()}
    # Only the head differs from full fine-tuning's start, and it already separates the classes.
    assert changed(
        {k: v.clone() for k, v in random_head.network.state_dict().items()}, head_of
    ) == {"net.fc.weight", "net.fc.bias"}
    with torch.no_grad():
        start.network.eval()
        probabilities = start.network(torch.from_numpy(val.images).permute(0, 3, 1, 2))
    assert (probabilities.argmax(1).numpy() == val.labels).mean() >= 0.9
    result = train_classifier(train, val, config, feature_cache=cache)
    moved = changed(head_of, result.model.state_dict())
    assert "net.fc.weight" in moved and any(name.startswith("net.layer") for name in moved)
    # The probe (epoch 0) validates as accurately but was not fine-tuned: the last epoch,
    # tying on accuracy, is kept over it, whatever their losses.
    assert result.history[0]["epoch"] == 0 and result.kept_epoch == config.epochs
    assert result.kept["val_accuracy"] >= 0.9
    # The probe reads finetune: head's unaugmented entries: no cache file more between them.
    train_classifier(train, val, config.replace(finetune="head", epochs=2), feature_cache=cache)
    assert sorted(cache.glob("*.npz")) == entries
    again = train_classifier(train, val, config, feature_cache=cache)
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name


@pytest.mark.parametrize("keep_epoch", ["last", "best"])
def test_lp_ft_keeps_the_probe_when_fine_tuning_validates_worse(
    weights: str, tmp_path: Path, keep_epoch: str
) -> None:
    train, val = bright_and_dark(24, seed=1), bright_and_dark(8, seed=2)
    cache = tmp_path / "features"
    # An lr that wrecks the network in one step: fine-tuning can only validate worse.
    config = tiny_config(
        pretrained=weights,
        normalise="data",
        finetune="lp-ft",
        epochs=2,
        lr=5.0,
        ema_decay=0,
        keep_epoch=keep_epoch,
    )
    start = build_trainer(config, train, val, Processes(), cache)
    probe = {k: v.clone() for k, v in start.network.state_dict().items()}
    result = train_classifier(train, val, config, feature_cache=cache)
    assert [record["epoch"] for record in result.history] == [0, 1, 2]
    assert result.kept_epoch == 0 and result.kept["val_accuracy"] >= 0.9
    assert all(record["val_accuracy"] < 0.9 for record in result.history[1:])
    assert not changed(probe, result.model.state_dict())
