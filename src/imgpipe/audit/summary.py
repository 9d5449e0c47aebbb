"""What the audit reports: ``metrics/audit.json`` (counts per split, kind and class; the method
and its settings; the top suspects) and a picture sheet of the top suspects."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from imgpipe.audit.suspects import AuditedImages, count_suspects
from imgpipe.data.splits import SplitArrays
from imgpipe.evaluation.pictures import contact_sheet

TOP_LISTED = 20  # suspects listed in audit.json (all of them are in suspects.csv)
SHEET_TILES = 36  # suspects pictured


def audit_summary(
    suspects: pd.DataFrame,
    images: AuditedImages,
    *,
    method: str,
    settings: Any,
    excluded: int,
) -> dict[str, Any]:
    """The small, committed summary: counts, the settings that produced them, the top
    suspects, and the out-of-sample accuracy (how good the models behind the verdicts were)."""
    splits = list(dict.fromkeys(images.splits))
    counts = count_suspects(suspects, splits, images.classes)
    split_of = np.array(images.splits)
    agrees = images.probabilities.argmax(1) == images.labels
    return {
        "method": method,
        "folds": settings.folds,
        "epochs": settings.epochs if method == "network" else None,
        "seed": settings.seed,
        "exclude": settings.exclude,
        "images": {name: int((split_of == name).sum()) for name in splits},
        "label_issues": int(suspects["issue"].str.contains("label").sum()),
        "outliers": int(suspects["issue"].str.contains("outlier").sum()),
        "suspects": {
            name: {kind: sum(per_class.values()) for kind, per_class in kinds.items()}
            for name, kinds in counts.items()
        },
        "per_class": counts,
        "out_of_sample_accuracy": {
            name: round(float(agrees[split_of == name].mean()), 4) for name in splits
        },
        "excluded_from_training": excluded,
        "top": suspects.head(TOP_LISTED).to_dict(orient="records"),
    }


def suspect_sheet(suspects: pd.DataFrame, splits: dict[str, SplitArrays]) -> Any:
    """A PIL image of the top suspects, captioned ``given->suggested score`` (outliers:
    ``given outlier score``), in the table's order."""
    from PIL import Image

    rows = {name: {file: i for i, file in enumerate(split.files)} for name, split in splits.items()}
    pictures, captions, smallest = [], [], 96
    for suspect in suspects.head(SHEET_TILES).itertuples():
        image = splits[suspect.split].images[rows[suspect.split][suspect.file]]
        picture = Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image)
        pictures.append(picture.convert("RGB"))
        smallest = min(smallest, *image.shape[:2])
        if "label" in suspect.issue:
            captions.append(f"{suspect.given}->{suspect.suggested} {suspect.score:.2f}")
        else:
            captions.append(f"{suspect.given} outlier {suspect.score:.2f}")
    # Digits stay crisp blown up; photos shrunk to a tile want smoothing.
    resample = Image.Resampling.NEAREST if smallest < 96 else Image.Resampling.BILINEAR
    return contact_sheet(pictures, captions, 96, "no suspects", resample)
