"""The data report's log lines: a summary, and a warning naming the report for each problem."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from imgpipe.data.data_report import log_data_report


def report(**problems: Any) -> dict[str, Any]:
    clean: dict[str, Any] = {
        "totals": {"train": 8, "val": 2, "test": 2},
        "split_fractions": {"train": 0.6667, "val": 0.1667, "test": 0.1667},
        "skipped_count": 1,
        "empty_classes": [],
        "duplicate_groups": 0,
    }
    return clean | problems


def test_a_clean_report_logs_one_summary_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        log_data_report(report(), Path("metrics/data.json"))
    assert [r.getMessage() for r in caplog.records] == [
        "images per split {'train': 8, 'val': 2, 'test': 2} "
        "(shares {'train': 0.6667, 'val': 0.1667, 'test': 0.1667}); 1 skipped"
    ]


def test_each_problem_is_a_warning_naming_the_report(caplog: pytest.LogCaptureFixture) -> None:
    groups = {
        "per_split": {"train": 3},
        "unmatched_count": 2,
        "spanning_classes_count": 0,
        "in_several_splits_count": 1,
    }
    problems = report(
        video={"clips": 2, "frames": 9, "skipped": 1},
        groups=groups,
        links_outside_source=["a", "b"],
        empty_classes=["cat"],
        duplicate_groups=3,
        near_duplicates={"max_distance_bits": 6, "pairs_count": 4, "pairs": []},
    )
    with caplog.at_level(logging.INFO):
        log_data_report(problems, Path("data.json"))
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert infos[1:] == [
        "video: 9 frames from 2 clips (1 skipped)",
        "groups per split {'train': 3}",
    ]
    assert warnings == [
        "2 paths the group pattern does not match (each its own group); see data.json",
        "1 groups in more than one split (a pre-split source); see data.json",
        "2 symbolic links in the source point outside it; see data.json",
        "classes without a single usable image: ['cat']",
        "3 images appear in more than one class or split; see data.json",
        "4 pairs of near-duplicate images (perceptual hashes within 6 bits) sit in different "
        "classes or splits; see data.json",
    ]
