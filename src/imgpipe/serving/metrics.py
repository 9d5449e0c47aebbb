"""The service's Prometheus series."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from imgpipe.serving.baseline import Baseline

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@dataclass
class ServiceMetrics:
    """Prometheus series of one app (own registry, so several apps can live in one process)."""

    classes: list[str]
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "imgpipe_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "imgpipe_http_request_duration_seconds",
            "Time from request to response by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "imgpipe_errors", "Requests refused or failed, by reason", ["reason"], registry=r
        )
        self.predictions = Counter(
            "imgpipe_predictions", "Images classified, by top-1 class", ["predicted"], registry=r
        )
        self.confidence = Histogram(
            "imgpipe_prediction_confidence",
            "Top-1 probability of each classified image",
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.batch_images = Histogram(
            "imgpipe_inference_batch_images",
            "Images per onnxruntime call (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.feature_log_dropped = Counter(
            "imgpipe_feature_log_dropped_images", "Images not logged (writer behind)", registry=r
        )
        for name in self.classes:  # every class shows up, with 0, from the start
            self.predictions.labels(predicted=name)
        self.model = Info(
            "imgpipe_model", "The served model (value 1, its identity in labels)", registry=r
        )

    def describe_model(self, sha256: str, architecture: str, commit: str | None) -> None:
        """``imgpipe_model_info{sha256=...}``: the alert on a changed model watches its labels."""
        self.model.info({"sha256": sha256, "architecture": architecture, "commit": commit or ""})

    def export_baseline(self, baseline: Baseline) -> None:
        """Constant gauges of the drift baseline, registered only when there is one (so that a
        service without a baseline exports no zeros the alerts would compare against)."""
        r = self.registry
        Gauge(
            "imgpipe_baseline_mean_confidence",
            "Mean top-1 probability on the drift-baseline sample",
            registry=r,
        ).set(baseline.mean_confidence)
        quantiles = Gauge(
            "imgpipe_baseline_confidence",
            "Top-1 probability at a quantile of the drift-baseline sample",
            ["quantile"],
            registry=r,
        )
        for quantile, value in baseline.confidence_quantiles.items():
            quantiles.labels(quantile=quantile).set(value)
        shares = Gauge(
            "imgpipe_baseline_predicted_share",
            "Share of the drift-baseline sample predicted as each class",
            ["predicted"],
            registry=r,
        )
        for name, share in baseline.predicted_share.items():
            shares.labels(predicted=name).set(share)

    def observe_predictions(self, probabilities: np.ndarray) -> None:
        for index, confidence in zip(
            probabilities.argmax(axis=1), probabilities.max(axis=1), strict=True
        ):
            self.predictions.labels(predicted=self.classes[index]).inc()
            self.confidence.observe(float(confidence))
