"""Suspects: images whose given label the out-of-sample probabilities contradict (cleanlab's
confident learning), and images far from every other in feature space (outliers), as one
table ranked by how suspicious each is, and the counts ``metrics/audit.json`` keeps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SUSPECT_COLUMNS = ["file", "split", "given", "suggested", "issue", "score"]


@dataclass
class AuditedImages:
    """Every audited image, in one order: train, val, test."""

    files: list[str]
    splits: list[str]
    labels: np.ndarray  # the given labels
    probabilities: np.ndarray  # out-of-sample, rows x classes
    features: np.ndarray  # rows x D, for the outlier search
    classes: list[str]


def find_suspects(images: AuditedImages) -> pd.DataFrame:
    """One row per suspect (columns :data:`SUSPECT_COLUMNS`): label suspects first, then
    outliers, each most suspicious first.

    ``issue`` is ``label`` (confident learning finds the given label unlikely), ``outlier``
    (far from its nearest neighbours, by Datalab's test) or ``label+outlier``. ``score`` says
    how suspicious, in [0, 1]: for a label suspect, 1 minus the out-of-sample probability of
    its given label; for an outlier, the share of audited images nearer their neighbours.
    ``suggested`` is the class the out-of-sample models give most probability."""
    from cleanlab import Datalab

    lab = Datalab(data={"label": images.labels}, label_name="label", verbosity=0)
    lab.find_issues(
        pred_probs=images.probabilities,
        features=images.features,
        issue_types={"label": {}, "outlier": {}},
    )
    labels, outliers = lab.get_issues("label"), lab.get_issues("outlier")
    is_label = labels["is_label_issue"].to_numpy(bool)
    is_outlier = outliers["is_outlier_issue"].to_numpy(bool)
    given_probability = images.probabilities[np.arange(len(images.labels)), images.labels]
    outlying = outliers["outlier_score"].rank(method="min", ascending=False).to_numpy()
    score = np.where(is_label, 1.0 - given_probability, (outlying - 1) / len(outlying))
    issue = np.where(is_label & is_outlier, "label+outlier", np.where(is_label, "label", "outlier"))
    suggested = images.probabilities.argmax(1)
    rows = np.flatnonzero(is_label | is_outlier)
    # Label suspects first (a wrong label is what a person can fix), each kind by score; ties
    # by position, so the order is stable.
    rows = rows[np.lexsort((rows, -score[rows], ~is_label[rows]))]
    return pd.DataFrame(
        {
            "file": [images.files[i] for i in rows],
            "split": [images.splits[i] for i in rows],
            "given": [images.classes[images.labels[i]] for i in rows],
            "suggested": [images.classes[suggested[i]] for i in rows],
            "issue": issue[rows],
            "score": np.round(score[rows], 4),
        },
        columns=SUSPECT_COLUMNS,
    )


def count_suspects(
    suspects: pd.DataFrame, splits: list[str], classes: list[str]
) -> dict[str, dict[str, dict[str, int]]]:
    """Per split, per kind (``label``, ``outlier``), per given class: how many suspects.
    An image that is both counts under each."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for split in splits:
        in_split = suspects[suspects["split"] == split]
        counts[split] = {
            kind: {
                name: int(
                    ((in_split["given"] == name) & in_split["issue"].str.contains(kind)).sum()
                )
                for name in classes
            }
            for kind in ("label", "outlier")
        }
    return counts
