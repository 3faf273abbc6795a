"""Prometheus metrics: requests, latency, predictions per digit, the model version."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
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
            "mlops_predictions_total", "Predictions by digit", ["digit"], registry=self.registry
        )
        self.model_version = Gauge(
            "mlops_model_version",
            "The model version serving (1 for the loaded one)",
            ["name", "version", "data_version"],
            registry=self.registry,
        )

    def set_model(self, name: str, version: str, data_version: str) -> None:
        self.model_version.clear()
        self.model_version.labels(name=name, version=version, data_version=data_version).set(1)
