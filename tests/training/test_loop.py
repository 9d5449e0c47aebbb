import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from imgpipe.training import loop
from imgpipe.training.augment import build_augmentation, build_mixing
from imgpipe.training.distributed import Processes
from imgpipe.training.inference import loss_and_accuracy, predict_split
from imgpipe.training.loop import Trainer, TrainResult, build_trainer, train_classifier
from imgpipe.training.settings import AugmentConfig
from tests.conftest import make_split, train_config


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
        train_config(seed=seed),
        metric_logger=logger,
    )


def test_learns_logs_and_keeps_the_last_epoch() -> None:
    recorder = Recorder()
    result = run(seed=0, logger=recorder)
    assert recorder.steps == 4
    assert {name for name, _ in recorder.metrics} == {
        "train/loss",
        "val/loss",
        "val/accuracy",
        "lr",
    }
    assert result.kept_epoch == result.history[-1]["epoch"] == 4
    assert result.kept["val_accuracy"] >= 0.9
    assert not result.model.training


def test_same_seed_gives_identical_weights_and_another_seed_does_not() -> None:
    first, second, other = run(seed=0), run(seed=0), run(seed=1)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    assert any(
        not torch.equal(tensor, other.model.state_dict()[name])
        for name, tensor in first.model.state_dict().items()
    )


def test_the_whole_network_trains_channels_last_on_the_cpu_and_the_head_alone_as_built() -> None:
    """oneDNN's CPU convolutions are faster channels-last; the frozen backbone of finetune:
    head keeps its layout (its exported graph is cached under a layout-blind fingerprint)."""
    convolutions = [
        module.weight
        for module in run(seed=0).model.modules()
        if isinstance(module, torch.nn.Conv2d) and module.weight.dim() == 4
    ]
    assert convolutions
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    assert any(not w.is_contiguous() for w in convolutions)
    head = train_classifier(
        make_split(24, seed=1), make_split(8, seed=2), train_config(finetune="head", epochs=2)
    )
    assert all(
        module.weight.is_contiguous()
        for module in head.model.modules()
        if isinstance(module, torch.nn.Conv2d)
    )


class CrashError(Exception):
    pass


class CrashAtEpoch(Recorder):
    """Raises when the given epoch's metrics arrive: that epoch's state is not saved yet."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def next_step(self) -> None:
        super().next_step()
        if self.steps == self.epoch:
            raise CrashError


def test_a_crashed_run_resumes_from_its_last_epoch_with_identical_results(
    tmp_path: Path,
) -> None:
    train, val = make_split(24, seed=1), make_split(8, seed=2)
    state = tmp_path / "state.pt"
    uninterrupted = train_classifier(train, val, train_config())
    with pytest.raises(CrashError):
        train_classifier(
            train, val, train_config(), metric_logger=CrashAtEpoch(3), state_path=state
        )
    assert torch.load(state, weights_only=True)["epoch"] == 2
    recorder = Recorder()
    resumed = train_classifier(train, val, train_config(), metric_logger=recorder, state_path=state)
    assert recorder.steps == 4  # epochs 1-2 replayed into the logger, 3-4 trained
    assert resumed.history == uninterrupted.history
    for name, tensor in uninterrupted.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_a_state_from_other_settings_is_not_resumed(tmp_path: Path) -> None:
    train, val = make_split(24, seed=1), make_split(8, seed=2)
    state = tmp_path / "state.pt"
    with pytest.raises(CrashError):
        train_classifier(
            train, val, train_config(), metric_logger=CrashAtEpoch(2), state_path=state
        )
    recorder = Recorder()
    result = train_classifier(
        train, val, train_config(lr=1e-3), metric_logger=recorder, state_path=state
    )
    assert recorder.steps == 4 and [h["epoch"] for h in result.history] == [1, 2, 3, 4]


def test_the_weight_average_blends_exactly_as_timms_after_steps_and_a_reload() -> None:
    from timm.utils.model_ema import ModelEmaV3

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)).train()
    ours = loop.WeightAverage(model, decay=0.9, use_warmup=True)
    timms = ModelEmaV3(model, decay=0.9, use_warmup=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 6):
        model(torch.randn(2, 1, 5, 5)).square().mean().backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if step == 3:  # an in-place load, as resuming does, must keep the lookup current
            model.load_state_dict({k: v + 1 for k, v in model.state_dict().items()})
        ours.update(model, step=step)
        timms.update(model, step=step)
    for name, tensor in timms.module.state_dict().items():
        assert torch.equal(tensor, ours.module.state_dict()[name]), name
    assert ours.module[1].num_batches_tracked.item() == 5 + 1  # copied, not blended


def test_sgd_one_cycle_with_clipping_learns() -> None:
    result = train_classifier(
        make_split(24, seed=1),
        make_split(8, seed=2),
        train_config(
            epochs=6,
            warmup_epochs=2,
            lr=0.01,
            weight_decay=5e-4,
            optimizer="sgd",
            schedule="onecycle",
            grad_clip=1.0,
        ),
    )
    lrs = [h["lr"] for h in result.history]
    assert max(lrs) > lrs[0] and max(lrs) > lrs[-1]  # up, then down
    assert result.kept["val_accuracy"] >= 0.9


@pytest.mark.parametrize("keep_epoch", ["last", "best"])
def test_the_model_has_the_kept_epochs_weights(keep_epoch: str) -> None:
    val = make_split(8, seed=2)
    val.labels[:] = np.random.default_rng(0).permutation(val.labels)  # scores that wander
    config = train_config(epochs=6, keep_epoch=keep_epoch)
    result = train_classifier(make_split(24, seed=1), val, config)
    best, last = loop._best_epoch(result.history), result.history[-1]["epoch"]
    assert best != last  # so the two choices are told apart
    assert result.kept_epoch == (last if keep_epoch == "last" else best)
    probabilities = predict_split(result.model, val, 8, torch.device("cpu"))
    loss, accuracy = loss_and_accuracy(probabilities, val.labels)
    assert accuracy == pytest.approx(result.kept["val_accuracy"])
    assert loss == pytest.approx(result.kept["val_loss"], abs=1e-5)


def test_early_stopping_stops_after_the_patience_runs_out() -> None:
    val = make_split(8, seed=2)
    val.labels[:] = np.random.default_rng(0).permutation(val.labels)  # unlearnable: no progress
    result = train_classifier(
        make_split(24, seed=1),
        val,
        train_config(epochs=15, early_stopping=2, keep_epoch="best"),
    )
    assert len(result.history) < 15
    assert result.history[-1]["epoch"] - result.kept_epoch == 2


def test_class_balance_by_sampler_and_by_loss_weights() -> None:
    from imgpipe.training.loop import class_weights, epoch_order

    labels = np.array([0] * 90 + [1] * 10)
    weights = class_weights(labels, 2)
    assert torch.allclose(weights, torch.tensor([100 / 180, 100 / 20]))
    order = epoch_order(labels, weights, balanced=True, shuffler=torch.Generator().manual_seed(0))
    assert len(order) == 100 and 35 <= (labels[order] == 1).sum() <= 65
    assert sorted(epoch_order(labels, weights, False, torch.Generator().manual_seed(0))) == list(
        range(100)
    )

    skewed = make_split(48, seed=1)
    keep = np.r_[0:48, 48:54]  # 48 "left", 6 "right"
    skewed = type(skewed)(
        skewed.images[keep], skewed.labels[keep], skewed.classes, [skewed.files[i] for i in keep]
    )
    val = make_split(16, seed=2)
    # How sure each model is of the minority class on its images, averaged over four seeds
    # (two epochs on 54 images swing from seed to seed; the average does not).
    minority_probability = {}
    for balance in ("none", "loss", "sampler"):
        probabilities = [
            predict_split(
                train_classifier(
                    skewed,
                    make_split(8, seed=2),
                    train_config(epochs=2, seed=seed, class_balance=balance, ema_decay=0),
                ).model,
                val,
                64,
                torch.device("cpu"),
            )[val.labels == 1, 1].mean()
            for seed in range(4)
        ]
        minority_probability[balance] = float(np.mean(probabilities))
    assert minority_probability["loss"] > minority_probability["none"] + 0.03
    assert minority_probability["sampler"] > minority_probability["none"] + 0.03


def augment_config(**changes: object) -> AugmentConfig:
    return train_config(augment=changes).augment


def test_batch_augmentation_draws_per_image_and_is_seeded() -> None:
    square = torch.zeros(16, 1, 32, 32, dtype=torch.uint8)
    square[:, :, 12:20, 12:20] = 200
    augment = build_augmentation(augment_config(degrees=30, translate=0.2, scale=0.2), 1)
    assert augment is not None
    torch.manual_seed(0)
    warped = augment(square)
    assert warped.dtype == torch.float32 and warped.shape == square.shape
    assert warped.min() >= 0 and warped.max() <= 255
    assert len({bytes(image.numpy()) for image in warped}) == 16  # own parameters each
    torch.manual_seed(0)
    assert torch.equal(augment(square), warped)  # seeded
    nothing = augment_config(degrees=0, translate=0, scale=0, hflip=False)
    assert build_augmentation(nothing, 1) is None


def test_horizontal_flips_about_half() -> None:
    half = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    half[..., :4] = 255
    flip = build_augmentation(augment_config(degrees=0, translate=0, scale=0, hflip=True), 1)
    assert flip is not None
    flipped = flip(half)
    left_bright = (flipped[..., 0] == 255).all(dim=(1, 2))
    assert 10 < int(left_bright.sum()) < 54
    assert torch.equal(flipped[~left_bright], half[~left_bright].flip(-1).float())


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
@pytest.mark.parametrize("channels", [1, 3])
def test_policies_and_photo_options_run_on_grey_and_colour(policy: str, channels: int) -> None:
    config = augment_config(
        policy=policy, crop_scale=0.35, color_jitter=0.2, erasing=0.5, hflip=True
    )
    images = torch.randint(0, 256, (24, channels, 40, 40), dtype=torch.uint8)
    augment = build_augmentation(config, channels)
    assert augment is not None
    out = augment(images)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
    assert not torch.equal(out, images.float())


class Tag(torch.nn.Module):
    """An 'operation' that adds its own number, counting its calls."""

    def __init__(self, number: int) -> None:
        super().__init__()
        self.number, self.calls = number, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return images + 10.0**self.number


def test_per_sample_policy_draws_distinct_operations_for_every_image() -> None:
    from imgpipe.training.augment import PerSamplePolicy

    operations = [Tag(n) for n in range(5)]
    policy = PerSamplePolicy(operations, picks=2)
    torch.manual_seed(0)
    out = policy(torch.zeros(200, 1, 1, 1, dtype=torch.float64)).flatten().long().tolist()
    digits = [[int(d) for d in f"{value:05d}"] for value in out]  # one digit per operation
    assert all(sorted(d) == [0, 0, 0, 1, 1] for d in digits)  # two distinct ops each
    assert len({tuple(d) for d in digits}) == 10  # every pair of the five drawn somewhere
    assert all(op.calls <= 2 for op in operations)  # one call per op and pick, not per image


def test_mixing_gives_soft_targets() -> None:
    images = torch.rand(7, 1, 8, 8) * 255
    labels = torch.randint(0, 4, (7,))
    assert build_mixing(0, 0, 4) is None
    for mixup, cutmix in ((0.2, 0), (0, 1.0), (0.2, 1.0)):
        mix = build_mixing(mixup, cutmix, 4)
        assert mix is not None
        mixed, targets = mix(images, labels)
        assert mixed.shape == images.shape and targets.shape == (7, 4)
        torch.testing.assert_close(targets.sum(1), torch.ones(7))
        partner = labels.roll(1)  # torchvision mixes each image with its batch neighbour
        for row, own, other in zip(targets, labels, partner, strict=True):
            assert set(row.nonzero().flatten().tolist()) <= {int(own), int(other)}


def test_the_trainer_is_built_by_keyword_only() -> None:
    """Several fields share a type (class_weights and loss_weights are both tensors): a
    positional call that swaps two would type-check, so there is none."""
    trainer = build_trainer(
        train_config(), make_split(8, seed=1), make_split(4, seed=2), Processes()
    )
    values = [getattr(trainer, field.name) for field in dataclasses.fields(Trainer) if field.init]
    with pytest.raises(TypeError, match="positional argument"):
        Trainer(*values)  # type: ignore[call-arg, misc]  # mypy, too, refuses this call


def test_each_epoch_shows_a_bar_over_its_batches_unless_its_lines_are_silenced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bars: list[tuple[str, int, object]] = []

    def recorded(batches: list[np.ndarray], **options: object) -> list[np.ndarray]:
        bars.append((str(options["desc"]), len(batches), options["disable"]))
        return batches

    monkeypatch.setattr(loop, "tqdm", recorded)
    config = train_config(epochs=2, batch_size=8)
    logger = logging.getLogger("imgpipe.training.loop")
    level = logger.level
    try:
        logger.setLevel(logging.INFO)
        train_classifier(make_split(12), make_split(2, seed=1), config)
        assert bars == [("epoch 1/2", 3, None), ("epoch 2/2", 3, None)]  # None: a terminal's
        bars.clear()
        logger.setLevel(logging.WARNING)  # as the audit's fold trainings are
        train_classifier(make_split(12), make_split(2, seed=1), config)
        assert [disable for *_, disable in bars] == [True, True]
    finally:
        logger.setLevel(level)
