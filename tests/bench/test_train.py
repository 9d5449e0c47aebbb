"""python -m bench train: rounds of a bare loop and the train stage, each round's ratio against
its own bare loop."""

from __future__ import annotations

from typing import Any

import pytest

from bench.train import bench_train
from imgpipe.training import loop
from imgpipe.training.settings import TrainConfig
from tests.bench.clock import FakeClock
from tests.conftest import train_config


def test_each_rounds_ratio_is_against_the_bare_loop_of_that_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stages: list[TrainConfig] = []
    train_classifier = loop.train_classifier

    def counted(*args: Any, **kwargs: Any) -> Any:
        stages.append(args[2])
        return train_classifier(*args, **kwargs)

    monkeypatch.setattr(loop, "train_classifier", counted)
    # Seconds of (bare loop's model building, its training, stage) per round: the bare loop
    # takes 1, 3 and 2 s in all, the stage 3x slower, 3x faster, then 2x slower.
    clock = FakeClock([0.25, 0.75, 3, 0.5, 2.5, 1, 1, 1, 4])
    config = train_config(epochs=1, warmup_epochs=0, batch_size=16, augment={"degrees": 5})
    results = bench_train(config, image_size=16, channels=1, images=64, rounds=3, clock=clock)
    assert clock.calls == 18 and len(stages) == 3  # both loops ran to the end in every round
    assert all(c.device == "cpu" and c.epochs == 1 and c.batch_size == 16 for c in stages)
    assert results["bare_loop_per_round"] == [64.0, 21.3, 32.0]
    assert results["train_stage_per_round"] == [21.3, 64.0, 16.0]
    assert results["ratio_per_round"] == [0.333, 3.0, 0.5]
    # The median of the rounds' ratios; the ratio of the medians would be 0.667.
    assert results["ratio"] == 0.5 and results["ratio_spread"] == [0.333, 3.0]
    assert (results["bare_loop_images_per_second"], results["rounds"]) == (32.0, 3)
