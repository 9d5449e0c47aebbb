"""The data report (``metrics/data.json``): counts per class and split, skipped files,
identical and near-identical images across classes or splits, groups, and its log lines."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from imgpipe.data.grouping import group_report
from imgpipe.data.near_duplicates import LISTED_PAIRS, Place, near_duplicate_pairs
from imgpipe.data.preprocess import SplitOutcome
from imgpipe.data.samples import Sample

log = logging.getLogger(__name__)


def find_leaks(
    outcomes: dict[str, SplitOutcome], samples: dict[str, list[Sample]], classes: list[str]
) -> list[dict[str, Any]]:
    """Groups of identical images (same decoded pixels) that sit in more than one class or split.

    Such duplicates leak test answers into training or teach contradictory labels.
    """
    label_of = {s.path.as_posix(): classes[s.label] for split in samples.values() for s in split}
    where: dict[str, list[dict[str, str]]] = {}
    for split, outcome in outcomes.items():
        for file, digest in outcome.digests.items():
            where.setdefault(digest, []).append(
                {"split": split, "class": label_of[file], "file": file}
            )
    leaks = []
    for copies in where.values():
        kinds = []
        if len({c["class"] for c in copies}) > 1:
            kinds.append("classes")
        if len({c["split"] for c in copies}) > 1:
            kinds.append("splits")
        if kinds:
            leaks.append({"across": kinds, "copies": sorted(copies, key=lambda c: c["file"])})
    return sorted(leaks, key=lambda leak: leak["copies"][0]["file"])


def find_near_duplicates(
    outcomes: dict[str, SplitOutcome],
    samples: dict[str, list[Sample]],
    classes: list[str],
    max_distance: int,
) -> tuple[int, list[dict[str, Any]]]:
    """How many near-duplicate pairs sit in different classes or splits (perceptual hashes
    within ``max_distance`` bits, pixel-identical pairs left to :func:`find_leaks`), and the
    closest :data:`LISTED_PAIRS` of them."""
    label_of = {s.path.as_posix(): s.label for split in samples.values() for s in split}
    files, hashes, places = [], [], []
    for split, outcome in outcomes.items():
        for file, hashed in outcome.hashes.items():
            files.append((split, file))
            hashes.append(hashed)
            places.append(Place(split, label_of[file], outcome.digests[file]))
    pairs = near_duplicate_pairs(hashes, places, max_distance)

    def where(i: int) -> dict[str, str]:
        split, file = files[i]
        return {"split": split, "class": classes[places[i].label], "file": file}

    listed = [
        {"distance": distance, "copies": sorted((where(i), where(j)), key=lambda c: c["file"])}
        for i, j, distance in pairs[:LISTED_PAIRS]
    ]
    return len(pairs), listed


def data_report(
    classes: list[str],
    splits: dict[str, list[Sample]],
    outcomes: dict[str, SplitOutcome],
    *,
    grouped: bool = False,
    patterned: bool = False,
    near_duplicate_distance: int | None = None,
    video: dict[str, int] | None = None,
    skipped_clips: list[dict[str, Any]] | None = None,
    source_notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Counts per class and split (after skipping), the share of images in each split, every
    skipped file with its reason, empty classes, identical images found in more than one class
    or split, near-duplicates there (``near_duplicate_distance``: None skips the search), the
    clips and frames found (``video``; ``skipped_clips`` join the skipped files), what
    download noted about the source (``source_notes``: links pointing outside it), and
    (``grouped``) the groups per split and class, groups found in several classes or splits,
    and (``patterned``) the paths the group pattern did not match."""
    counts = _counts(classes, splits, outcomes)
    skipped = [
        {"split": split, **entry}
        for split, outcome in outcomes.items()
        for entry in outcome.skipped
    ] + list(skipped_clips or [])
    leaks = find_leaks(outcomes, splits, classes)
    totals = {split: sum(c.values()) for split, c in counts.items()}
    report: dict[str, Any] = {
        "classes": classes,
        "counts": counts,
        "totals": totals,
        "split_fractions": {
            split: round(total / max(1, sum(totals.values())), 4) for split, total in totals.items()
        },
        "empty_classes": sorted(n for n in classes if not any(c[n] for c in counts.values())),
        "skipped": sorted(skipped, key=lambda entry: entry["file"]),
        "skipped_count": len(skipped),
        "duplicates_across_classes_or_splits": leaks,
        "duplicate_groups": len(leaks),
    }
    if video is not None:
        report["video"] = video
    report |= source_notes or {}
    if near_duplicate_distance is not None:
        count, listed = find_near_duplicates(outcomes, splits, classes, near_duplicate_distance)
        report["near_duplicates"] = {
            "max_distance_bits": near_duplicate_distance,
            "pairs_count": count,
            "pairs": listed,
        }
    if grouped:
        report["groups"] = group_report(splits, classes, _unmatched(splits) if patterned else [])
    return report


def _counts(
    classes: list[str], splits: dict[str, list[Sample]], outcomes: dict[str, SplitOutcome]
) -> dict[str, dict[str, int]]:
    """Images per split and class, skipped files not counted."""
    counts: dict[str, dict[str, int]] = {}
    for split, samples in splits.items():
        kept = set(outcomes[split].digests)
        per_class = Counter(s.label for s in samples if s.path.as_posix() in kept)
        counts[split] = {name: per_class.get(i, 0) for i, name in enumerate(classes)}
    return counts


def _unmatched(splits: dict[str, list[Sample]]) -> list[str]:
    """The paths (a frame: its clip) the group pattern did not match."""
    return sorted(
        {
            s.clip or s.path.as_posix()
            for part in splits.values()
            for s in part
            if s.group_found is None
        }
    )


def log_data_report(report: dict[str, Any], path: Path) -> None:
    """Log the report's summary, and a warning for each problem it found (see ``path``)."""
    log.info(
        "images per split %s (shares %s); %d skipped",
        report["totals"],
        report["split_fractions"],
        report["skipped_count"],
    )
    if "video" in report:
        video = report["video"]
        log.info(
            "video: %d frames from %d clips (%d skipped)",
            video["frames"],
            video["clips"],
            video["skipped"],
        )
    if "groups" in report:
        _log_groups(report["groups"], path)
    if report.get("links_outside_source"):
        log.warning(
            "%d symbolic links in the source point outside it; see %s",
            len(report["links_outside_source"]),
            path,
        )
    if report["empty_classes"]:
        log.warning("classes without a single usable image: %s", report["empty_classes"])
    if report["duplicate_groups"]:
        log.warning(
            "%d images appear in more than one class or split; see %s",
            report["duplicate_groups"],
            path,
        )
    near = report.get("near_duplicates", {})
    if near.get("pairs_count", 0):
        log.warning(
            "%d pairs of near-duplicate images (perceptual hashes within %d bits) sit "
            "in different classes or splits; see %s",
            near["pairs_count"],
            near["max_distance_bits"],
            path,
        )


def _log_groups(groups: dict[str, Any], path: Path) -> None:
    log.info("groups per split %s", groups["per_split"])
    for key, what in (
        ("unmatched_count", "paths the group pattern does not match (each its own group)"),
        ("spanning_classes_count", "groups with images in more than one class"),
        ("in_several_splits_count", "groups in more than one split (a pre-split source)"),
    ):
        if groups[key]:
            log.warning("%d %s; see %s", groups[key], what, path)
