"""python -m bench features: onnxruntime against torch eager on the same images, the export
timed on its own."""

from __future__ import annotations

from bench.features import bench_features
from tests.bench.clock import FakeClock


def test_rates_ratio_and_break_even_from_the_timed_sections() -> None:
    # Seconds of: the export, then per round torch eager and onnxruntime.
    clock = FakeClock([6.0, 2.0, 0.5, 2.5, 0.5])
    results = bench_features("test_resnet", image_size=32, images=20, rounds=2, clock=clock)
    assert clock.calls == 10
    assert results["export_seconds"] == 6.0
    assert results["torch_eager_images_per_second"] == 9.0  # median of 10 and 8
    assert results["onnxruntime_images_per_second"] == 40.0
    assert results["ratio_per_round"] == [4.0, 5.0] and results["ratio"] == 4.5
    assert results["break_even_images"] == round(6.0 / (1 / 9 - 1 / 40))


def test_runs_on_the_real_engines() -> None:
    results = bench_features("test_resnet", image_size=32, images=8, rounds=1)
    assert results["onnxruntime_images_per_second"] > 0 and results["ratio"] > 0
