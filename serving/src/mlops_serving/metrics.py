"""Prometheus metrics: requests, latency, predictions per digit and model version, the
people's verdicts on them (the uploader's feedback, a reviewer's decision), the model version,
and in shadow mode the candidate's predictions beside production and the verdicts on them.

With several waitress processes (server.py sets PROMETHEUS_MULTIPROC_DIR)
each process writes its values to files there, and /metrics sums them.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector


class Metrics:
    # The methods counted by name; anything else is counted as "other" (labels stay a closed set).
    METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))

    def __init__(self):
        self.registry = CollectorRegistry()
        # What /metrics shows: this process's registry, or the sum over all processes.
        self.exposition = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition)
        self._model_labels: dict[str, str] | None = None
        self.requests = Counter(
            "mlops_http_requests_total",
            "HTTP requests by endpoint and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlops_http_request_duration_seconds",
            "HTTP request latency by endpoint",
            ["endpoint"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.predictions = Counter(
            "mlops_predictions_total",
            "Predictions by digit and model version",
            ["digit", "model_version"],
            registry=self.registry,
        )
        # Live accuracy: right / (right + wrong), per version, from two sources.
        self.feedback = Counter(
            "mlops_feedback_total",
            "Uploaders' feedback on a prediction: right or wrong, by model version",
            ["model_version", "verdict"],
            registry=self.registry,
        )
        self.reviews = Counter(
            "mlops_reviews_total",
            "Reviewers' decisions on a prediction: right, wrong or rejected, by model version",
            ["model_version", "verdict"],
            registry=self.registry,
        )
        # Shadow mode: the candidate beside production, and people's verdicts on its digit.
        self.shadow_predictions = Counter(
            "mlops_shadow_predictions_total",
            "Predictions of the candidate shadowing production, by whether they agreed",
            ["model_version", "agreement"],
            registry=self.registry,
        )
        self.shadow_verdicts = Counter(
            "mlops_shadow_verdicts_total",
            "People's labels (feedback or review) against the shadowing candidate's digit",
            ["model_version", "verdict"],
            registry=self.registry,
        )
        self.originals_waiting = Gauge(
            "mlops_upload_originals_waiting",
            "Uploads whose original is not in the object store yet (the outbox)",
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.originals_bytes = Gauge(
            "mlops_upload_originals_bytes",
            "Bytes of the originals in the outbox (past serving_outbox_max_bytes: 503)",
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.originals_oldest = Gauge(
            "mlops_upload_originals_oldest_seconds",
            "How long the oldest original in the outbox has waited",
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.store_failures = Counter(
            "mlops_upload_store_failures_total",
            "Failed attempts to ship originals to the object store (they stay queued)",
            registry=self.registry,
        )
        self.model_version = Gauge(
            "mlops_model_version",
            "The web processes serving this model version (0 once it was replaced)",
            ["name", "version", "data_version"],
            # Summed over the live processes: fewer than the host runs means some have none.
            multiprocess_mode="livesum",
            registry=self.registry,
        )

    def count_feedback(self, row, label: int) -> None:
        """After an uploader's feedback `label` on `row` (an mlops_uploads.Upload) was stored."""
        verdict = "right" if label == row.predicted_label else "wrong"
        self.feedback.labels(model_version=row.model_version, verdict=verdict).inc()
        self._count_shadow_verdict(row, label)

    def count_review(self, row) -> None:
        """After a reviewer's decision on `row` was stored."""
        if row.review_status == "rejected":
            verdict = "rejected"
        else:
            verdict = "right" if row.reviewed_label == row.predicted_label else "wrong"
        self.reviews.labels(model_version=row.model_version, verdict=verdict).inc()
        self._count_shadow_verdict(row, row.reviewed_label)

    def count_shadow(self, version: str, agreed: bool) -> None:
        agreement = "agree" if agreed else "disagree"
        self.shadow_predictions.labels(model_version=version, agreement=agreement).inc()

    def _count_shadow_verdict(self, row, label: int | None) -> None:
        if row.shadow_model_version is None or label is None:
            return
        verdict = "right" if label == row.shadow_predicted_label else "wrong"
        self.shadow_verdicts.labels(model_version=row.shadow_model_version, verdict=verdict).inc()

    def set_model(self, name: str, version: str, data_version: str) -> None:
        labels = {"name": name, "version": version, "data_version": data_version}
        if labels == self._model_labels:
            return
        if self._model_labels is not None:
            # 0, not removed: a value written to the multiprocess files stays there.
            self.model_version.labels(**self._model_labels).set(0)
        self.model_version.labels(**labels).set(1)
        self._model_labels = labels
