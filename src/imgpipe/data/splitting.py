"""Assigning samples to train, val and test: a source's own splits kept, the rest split
stratified by class, or whole groups at a time (:mod:`imgpipe.data.grouping`)."""

from __future__ import annotations

from collections import Counter

from sklearn.model_selection import train_test_split

from imgpipe.data.grouping import grouped_split
from imgpipe.data.samples import PreprocessError, Sample
from imgpipe.errors import ImgpipeError


def assign_splits(
    samples: dict[str | None, list[Sample]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    *,
    grouped: bool = False,
) -> dict[str, list[Sample]]:
    """Keep a source's own splits; split the rest stratified by class with ``seed`` (whole
    groups at a time when ``grouped``).

    A pre-split source without a validation split gets one carved from its training split.
    """
    carve = _grouped if grouped else _stratified
    if None in samples:
        rest, test = carve(samples[None], test_fraction, seed, "test")
        train, val = carve(rest, val_fraction / (1 - test_fraction), seed, "val")
        return {"train": train, "val": val, "test": test}
    train = samples.get("train", [])
    val = samples.get("val") or []
    if not val:
        train, val = carve(train, val_fraction, seed, "val")
    test = samples.get("test") or []
    if not test:
        raise PreprocessError("the source is pre-split but has no test/ folder")
    return {"train": train, "val": val, "test": test}


def _stratified(
    samples: list[Sample], fraction: float, seed: int, name: str
) -> tuple[list[Sample], list[Sample]]:
    labels = [s.label for s in samples]
    try:
        kept, taken = train_test_split(
            samples, test_size=fraction, stratify=labels, random_state=seed
        )
    except ValueError as exc:
        raise PreprocessError(
            f"cannot carve a stratified {name} split of {fraction:.0%} from {len(samples)} "
            f"images ({dict(Counter(labels))} per class index): {exc}"
        ) from None
    return sorted(kept, key=_order), sorted(taken, key=_order)


def _grouped(
    samples: list[Sample], fraction: float, seed: int, name: str
) -> tuple[list[Sample], list[Sample]]:
    try:
        kept, taken = grouped_split(samples, fraction, seed, name)
    except ImgpipeError as error:
        raise PreprocessError(str(error)) from None
    return sorted(kept, key=_order), sorted(taken, key=_order)


def _order(sample: Sample) -> tuple[int, str]:
    return sample.label, sample.path.as_posix()
