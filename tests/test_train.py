import torch

from imgpipe.train import Augmentation, TrainResult, train_classifier
from tests.conftest import make_split


class Recorder:
    def __init__(self) -> None:
        self.metrics: list[tuple[str, float]] = []
        self.steps = 0

    def log_metric(self, name: str, val: float) -> None:
        self.metrics.append((name, val))

    def next_step(self) -> None:
        self.steps += 1


def run(seed: int, logger: Recorder | None = None) -> TrainResult:
    return train_classifier(
        make_split(24, seed=1),
        make_split(8, seed=2),
        architecture="test_resnet",
        epochs=4,
        batch_size=8,
        lr=3e-3,
        weight_decay=0.05,
        warmup_epochs=1,
        label_smoothing=0.1,
        ema_decay=0.9,
        seed=seed,
        augmentation=Augmentation(degrees=5, translate=0.05),
        device="cpu",
        metric_logger=logger,
    )


def test_learns_logs_and_keeps_the_best_epoch() -> None:
    recorder = Recorder()
    result = run(seed=0, logger=recorder)
    assert recorder.steps == 4
    assert {name for name, _ in recorder.metrics} == {
        "train/loss",
        "val/loss",
        "val/accuracy",
        "lr",
    }
    assert result.best["val_accuracy"] == max(h["val_accuracy"] for h in result.history)
    assert result.best["val_accuracy"] >= 0.9
    assert not result.model.training


def test_same_seed_gives_identical_weights_and_another_seed_does_not() -> None:
    first, second, other = run(seed=0), run(seed=0), run(seed=1)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    assert any(
        not torch.equal(tensor, other.model.state_dict()[name])
        for name, tensor in first.model.state_dict().items()
    )
