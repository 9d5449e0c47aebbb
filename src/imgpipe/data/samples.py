"""The images of the raw ImageFolder tree, each with its class, its pre-made split (if the
source has them) and the group it is split with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from imgpipe.data.grouping import group_id
from imgpipe.data.layout import files_below, is_junk, split_folders
from imgpipe.errors import ImgpipeError


class PreprocessError(ImgpipeError):
    """The raw data cannot be turned into train/val/test splits."""


@dataclass(frozen=True)
class Sample:
    path: Path  # relative to the raw root, for reports (a frame: <clip path>/frame_<index>.png)
    label: int
    group_found: str | None = None  # what preprocess.group_pattern captured; None: no match
    clip: str | None = None  # a video frame: its clip's path relative to the raw root
    file: Path | None = None  # where the pixels are when not at <raw root>/<path> (frames)

    @property
    def group(self) -> str:
        """The group the image is split with: the pattern's capture, else its clip, else the
        image alone."""
        if self.group_found is not None:
            return self.group_found
        return self.clip if self.clip is not None else self.path.as_posix()

    def source(self, raw_root: Path) -> Path:
        return self.file if self.file is not None else raw_root / self.path


def list_samples(
    root: Path, group_pattern: str | None = None
) -> tuple[list[str], dict[str | None, list[Sample]]]:
    """Class names (sorted folder names) and the samples of each pre-made split, each with the
    group ``group_pattern`` finds in its path below its class folder (see
    :mod:`imgpipe.data.grouping`).

    Returns:
        ``(classes, samples)`` where ``samples`` maps ``"train"``/``"val"``/``"test"`` to their
        samples for a pre-split tree, or ``None`` to all samples for an unsplit one. Files in
        nested folders under a class belong to that class.
    """
    pattern = re.compile(group_pattern) if group_pattern else None
    pre_split = split_folders(root)
    split_roots: dict[str | None, Path] = (
        {name: path for name, path in pre_split.items()} if pre_split else {None: root}
    )
    classes = sorted(
        {
            folder.name
            for split_root in split_roots.values()
            for folder in _class_folders(split_root)
        }
    )
    if not classes:
        raise PreprocessError(f"{root}: no class folders found")
    index = {name: i for i, name in enumerate(classes)}
    samples: dict[str | None, list[Sample]] = {}
    for split, split_root in split_roots.items():
        samples[split] = [
            Sample(
                path.relative_to(root),
                index[class_dir.name],
                group_id(path.relative_to(class_dir).as_posix(), pattern),
            )
            for class_dir in sorted(_class_folders(split_root))
            for path in files_below(class_dir)
        ]
    return classes, samples


def _class_folders(split_root: Path) -> list[Path]:
    return [p for p in split_root.iterdir() if p.is_dir() and not is_junk(p.name)]
