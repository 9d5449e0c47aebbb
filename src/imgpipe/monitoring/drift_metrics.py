"""``imgpipe drift``'s result as Prometheus gauges: written for node_exporter's textfile
collector or pushed to a Pushgateway, so that drift and a drift job that stopped running raise
alerts next to the service's own (``deploy/prometheus/imgpipe-rules.yml``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from imgpipe.errors import ImgpipeError

PUSH_JOB = "imgpipe_drift"


def drift_registry(summary: dict[str, Any], finished: float | None = None) -> CollectorRegistry:
    """The gauges of one drift run (``summary`` as in ``drift.json``), stamped with the time
    it finished (now by default): the stale-job alert reads that stamp."""
    registry = CollectorRegistry()

    def gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, documentation, labels, registry=registry)

    features, embedding = summary["features"], summary["embedding"]
    gauge("imgpipe_drift_detected", "1 when the last drift run detected drift").set(
        summary["drift_detected"]
    )
    gauge(
        "imgpipe_drift_share_drifted_columns", "Share of the per-image features that drifted"
    ).set(features["drifted_share"])
    gauge("imgpipe_drift_share_threshold", "Share of drifted features that counts as drift").set(
        features["drift_share"]
    )
    gauge(
        "imgpipe_drift_embedding_score", "ROC AUC of a reference-vs-current embedding classifier"
    ).set(embedding["score"])
    gauge(
        "imgpipe_drift_embedding_threshold", "Embedding ROC AUC above which embeddings drifted"
    ).set(embedding["threshold"])
    groups = gauge("imgpipe_drift_group_detected", "1 when a group of features drifted", ("group",))
    groups.labels(group="features").set(features["drift_detected"])
    groups.labels(group="embedding").set(embedding["drift_detected"])
    _column_gauges(registry, features["columns"])
    rows = gauge("imgpipe_drift_rows", "Rows compared, by dataset", ("dataset",))
    for dataset, count in summary["rows"].items():
        rows.labels(dataset=dataset).set(count)
    gauge("imgpipe_drift_last_run_timestamp_seconds", "Unix time the last drift run finished").set(
        time.time() if finished is None else finished
    )
    return registry


def _column_gauges(registry: CollectorRegistry, columns: dict[str, dict[str, Any]]) -> None:
    """Each feature's score (a p-value or a distance: ``method`` says which) and verdict."""
    scores = Gauge(
        "imgpipe_drift_column_score",
        "Drift score of one feature",
        ("column", "method"),
        registry=registry,
    )
    detected = Gauge(
        "imgpipe_drift_column_detected",
        "1 when one feature drifted",
        ("column",),
        registry=registry,
    )
    for column, result in columns.items():
        scores.labels(column=column, method=result["method"]).set(result["score"])
        detected.labels(column=column).set(result["drift_detected"])


def check_textfile(textfile: Path | None) -> None:
    """Refuse a name the textfile collector would ignore, before minutes of drift checks."""
    if textfile is not None and textfile.suffix != ".prom":
        raise ImgpipeError(
            f"--prometheus-textfile {textfile}: node_exporter reads only *.prom files"
        )


def export_drift(
    summary: dict[str, Any], *, textfile: Path | None = None, pushgateway: str | None = None
) -> None:
    """Write the gauges to ``textfile`` (atomically, as the textfile collector needs) and/or
    push them to ``pushgateway`` under job ``imgpipe_drift`` (replacing the previous run's)."""
    registry = drift_registry(summary)
    if textfile is not None:
        check_textfile(textfile)
        textfile.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(textfile), registry)
    if pushgateway is not None:
        try:
            push_to_gateway(pushgateway, job=PUSH_JOB, registry=registry)
        except OSError as error:  # URLError and HTTPError are OSErrors
            raise ImgpipeError(f"--pushgateway {pushgateway}: {error}") from None
