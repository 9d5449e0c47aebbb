"""python -m bench finetune: per-epoch costs from runs of 1 and more epochs, the feature cache
built by the first run and timed on its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.finetune import HEAD_EPOCHS, bench_finetune
from imgpipe.training import loop
from tests.bench.clock import FakeClock
from tests.conftest import train_config


def test_epoch_costs_are_differences_of_runs_after_the_cache_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[tuple[str, int, bool]] = []
    caches: set[Path] = set()
    train_classifier = loop.train_classifier

    def recorded(*args: Any, feature_cache: Path, **kwargs: Any) -> Any:
        config = args[2]
        runs.append((config.finetune, config.epochs, any(feature_cache.iterdir())))
        caches.add(feature_cache)
        return train_classifier(*args, feature_cache=feature_cache, **kwargs)

    monkeypatch.setattr(loop, "train_classifier", recorded)
    # Seconds of: head 1 epoch (building the cache), head 1, head 21, full 1, full 2.
    clock = FakeClock([5, 1, 1.2, 2, 5])
    config = train_config(model="test_resnet", batch_size=8, warmup_epochs=0)
    results = bench_finetune(config, image_size=32, images=16, clock=clock)
    assert runs == [
        ("head", 1, False),
        ("head", 1, True),
        ("head", 1 + HEAD_EPOCHS, True),
        ("full", 1, True),
        ("full", 2, True),
    ]
    assert len(caches) == 1 and clock.calls == 10
    assert results["architecture"] == "test_resnet" and results["images"] == 16
    assert results["cache_build_seconds"] == 4.0  # 5 s against 1 s with the cache
    assert results["head_seconds_per_epoch"] == 0.01  # 0.2 s over 20 more epochs
    assert results["full_seconds_per_epoch"] == 3.0
    assert results["speedup_per_epoch"] == 300.0
