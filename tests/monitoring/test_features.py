from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imgpipe.monitoring.features import (
    STATISTICS_CHUNK,
    baseline_summary,
    feature_table,
    image_statistics,
    sample_rows,
    take_rows,
)
from imgpipe.runtime.onnx_model import OnnxClassifier


def test_statistics_move_with_inversion_and_blur() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 40, (6, 16, 16, 1), dtype=np.uint8)
    images[:, 4:12, 4:12] = 230
    stats = image_statistics(images)
    inverted = image_statistics(255 - images)
    np.testing.assert_allclose(stats["brightness"] + inverted["brightness"], 1.0, atol=1e-6)
    np.testing.assert_allclose(stats["dark_fraction"], inverted["bright_fraction"])
    blurred = images.astype(np.float32)
    blurred[:, 1:-1, 1:-1] = (
        sum(
            blurred[:, 1 + dy : 15 + dy, 1 + dx : 15 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
        )
        / 9
    )
    assert (image_statistics(blurred.astype(np.uint8))["sharpness"] < stats["sharpness"]).all()


def test_each_image_gets_the_figures_it_gets_alone_whatever_chunk_it_falls_in() -> None:
    images = np.random.default_rng(1).integers(0, 256, (2 * STATISTICS_CHUNK + 3, 12, 10, 3))
    images = images.astype(np.uint8)
    together = image_statistics(images)
    for row in (0, STATISTICS_CHUNK - 1, STATISTICS_CHUNK, len(images) - 1):
        alone = image_statistics(images[row : row + 1])
        assert {name: values[row] for name, values in together.items()} == {
            name: values[0] for name, values in alone.items()
        }
    assert all(len(values) == 0 for values in image_statistics(images[:0]).values())


def test_sampling_is_seeded_and_spans_all_parts() -> None:
    parts = [np.arange(10)[:, None], np.arange(100, 105)[:, None]]
    rows = sample_rows([10, 5], 8, seed=1)
    first = take_rows(parts, rows)
    assert len(first) == 8 and len(np.unique(first)) == 8
    assert first.min() < 10 and first.max() >= 100  # both parts
    assert all((np.diff(picked) > 0).all() for picked in rows)  # each part's rows ascending
    np.testing.assert_array_equal(first, take_rows(parts, sample_rows([10, 5], 8, seed=1)))
    assert len(take_rows(parts, sample_rows([10, 5], 100, seed=1))) == 15


def test_summary_counts_predicted_shares() -> None:
    import pandas as pd

    table = pd.DataFrame(
        {
            **{
                name: [0.1, 0.3]
                for name in (
                    "brightness",
                    "contrast",
                    "sharpness",
                    "dark_fraction",
                    "bright_fraction",
                )
            },
            "predicted": ["a", "a"],
            "confidence": [0.5, 1.0],
            "emb_0": [0.0, 1.0],
        }
    )
    summary = baseline_summary(table, ["a", "b"])
    assert summary["predicted_share"] == {"a": 1.0, "b": 0.0}
    assert summary["embedding_dims"] == 1
    assert summary["mean_confidence"] == 0.75
    # pandas' linear interpolation between 0.5 and 1.0: what the service exports as quantiles
    assert summary["confidence_quantiles"] == {
        "0.05": 0.525,
        "0.1": 0.55,
        "0.25": 0.625,
        "0.5": 0.75,
    }


def test_a_reference_table_shows_its_progress_and_is_the_same_table(
    tiny_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # more than a chunk of the bar, which must not change the batches the model sees
    images = np.random.default_rng(2).integers(0, 256, (300, 32, 32, 1), dtype=np.uint8)
    classifier = OnnxClassifier(tiny_onnx)
    quiet = feature_table(classifier, images)
    assert "drift reference" not in capsys.readouterr().err
    shown = feature_table(classifier, images, progress="drift reference")
    shown_err = capsys.readouterr().err
    assert "drift reference: 100%" in shown_err and "300/300" in shown_err
    pd.testing.assert_frame_equal(shown, quiet)
