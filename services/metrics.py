"""Prometheus metrics of the prediction service.

BentoML's ``bentoml.metrics`` is prometheus-client behind a proxy that works across its
worker processes, and its ``/metrics`` endpoint serves them next to BentoML's own.
Created lazily: the proxy only works once BentoML has set up the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Top probabilities of ten classes start at 0.1; a calibrated champion answers most
# in-distribution digits above 0.95, so the buckets are finest near 1.
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class ServiceMetrics:
    requests: object
    latency: object
    predictions: object
    drafts: object
    feedback: object
    corrections: object
    store_errors: object
    spool_depth: object
    model_info: object
    confidence: object
    unusual: object
    _children: dict[tuple[str, ...], object] = field(default_factory=dict, repr=False)

    def child(self, metric: str, *values: str):
        """``<metric>.labels(*values)``, made once per metric and label values: in BentoML's
        multiprocess mode ``labels()`` costs 1-3 us more than the increment it leads to, on
        every answer."""
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            # A race makes the same child twice: prometheus-client hands back the one it has.
            child = self._children[key] = getattr(self, metric).labels(*values)
        return child


@cache
def service_metrics() -> ServiceMetrics:
    import bentoml

    return ServiceMetrics(
        requests=bentoml.metrics.Counter(
            name="digitloop_requests_total",
            documentation="Requests by route and status.",
            labelnames=["route", "status"],
        ),
        latency=bentoml.metrics.Histogram(
            name="digitloop_request_duration_seconds",
            documentation="Time to answer, by route and status.",
            labelnames=["route", "status"],
            buckets=LATENCY_BUCKETS,
        ),
        predictions=bentoml.metrics.Counter(
            name="digitloop_predictions_total",
            documentation="Predictions by predicted label, model version and track.",
            labelnames=["label", "model_version", "track"],
        ),
        drafts=bentoml.metrics.Counter(
            name="digitloop_drafts_total",
            documentation="Drafts answered (drawings in progress, not logged, not in "
            "digitloop_predictions_total), by model version and track.",
            labelnames=["model_version", "track"],
        ),
        feedback=bentoml.metrics.Counter(
            name="digitloop_feedback_total",
            documentation="Feedback records accepted, by model version and track.",
            labelnames=["model_version", "track"],
        ),
        corrections=bentoml.metrics.Counter(
            name="digitloop_corrections_total",
            documentation="Feedback that corrected the prediction, by model version and track.",
            labelnames=["model_version", "track"],
        ),
        store_errors=bentoml.metrics.Counter(
            name="digitloop_store_errors_total",
            documentation="Failed writes to the store, by kind (predictions, feedback).",
            labelnames=["kind"],
        ),
        spool_depth=bentoml.metrics.Gauge(
            name="digitloop_feedback_spool_depth",
            documentation="Feedback records waiting in the local spool for the store.",
            multiprocess_mode="livesum",
        ),
        model_info=bentoml.metrics.Gauge(
            name="digitloop_model_info",
            documentation="1 for the model version each track serves.",
            labelnames=["model_version", "track"],
            multiprocess_mode="max",
        ),
        confidence=bentoml.metrics.Histogram(
            name="digitloop_answer_confidence",
            documentation=(
                "Calibrated top probability of each answer, by model version and track: "
                "its mean (sum / count) is the label-free accuracy estimate (CBPE)."
            ),
            labelnames=["model_version", "track"],
            buckets=CONFIDENCE_BUCKETS,
        ),
        unusual=bentoml.metrics.Counter(
            name="digitloop_unusual_answers_total",
            documentation="Answers to drawings flagged unusual (novelty above the version's "
            "threshold), by model version and track; over digitloop_predictions_total, the "
            "flagged share the drift step tests.",
            labelnames=["model_version", "track"],
        ),
    )
