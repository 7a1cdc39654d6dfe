"""Thresholds of the loop's decisions, read from ``DIGITLOOP_*`` environment variables.

Each default is the one DESIGN.md's rules are tuned with. Whether a window drifted is the
drift step's call (its thresholds are ``DriftSettings`` in :mod:`pipelines.drift.detect`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from contracts.settings import AdminTokenSettings, DigitloopEnv, ServiceUrlSettings


class DecisionSettings(DigitloopEnv):
    """When to retrain, what a challenger must show, and how a canary is judged."""

    # -- retrain ---------------------------------------------------------------------
    min_new_labels: int = Field(
        default=200, ge=1, description="Labelled samples since the last training needed to retrain."
    )
    accuracy_threshold: float = Field(
        default=0.95, ge=0, le=1, description="Live accuracy below this is a reason to retrain."
    )
    class_error_threshold: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="A class whose error rate reaches this is a reason to retrain.",
    )
    min_class_samples: int = Field(
        default=10, ge=1, description="Labelled samples a class needs before its error rate counts."
    )

    # -- gate ------------------------------------------------------------------------
    max_mnist_regression: float = Field(
        default=0.005, ge=0, le=1, description="Most MNIST test accuracy a challenger may lose."
    )
    min_holdout_gain: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="How much a challenger must beat the champion by on held-out feedback.",
    )

    # -- canary ----------------------------------------------------------------------
    new_canary_weight: int = Field(
        default=20, ge=1, le=100, description="Percent of traffic to a new canary."
    )
    canary_min_samples: int = Field(
        default=200, ge=1, description="Labelled canary predictions before it is judged."
    )
    canary_max_samples: int = Field(
        default=2000,
        ge=1,
        description="Labelled canary predictions after which an undecided canary is rolled back.",
    )
    non_inferiority_margin: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Canary accuracy may be this much below stable's and still count as not worse.",
    )
    alpha: float = Field(
        default=0.05, gt=0, lt=1, description="Significance level of the canary tests."
    )
    max_error_rate_increase: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Most the canary's error (5xx) rate may exceed stable's.",
    )
    max_p95_latency_ratio: float = Field(
        default=1.5,
        ge=1,
        description="Most the canary's p95 latency may be, as a multiple of stable's.",
    )


class LoopSettings(AdminTokenSettings, ServiceUrlSettings):
    """Where the loop acts and what it retrains with.

    With ``rollout=service`` it reloads the service at ``service_url`` with the admin token.
    """

    rollout: Literal["service", "helm", "kserve"] = Field(
        default="service",
        description="How versions are rolled out: `service` (the service's /admin/reload), "
        "`helm` (`helm upgrade` of the release) or `kserve` (the InferenceService, through "
        "the kserve SDK).",
    )
    helm_release: str = Field(default="digitloop", description="Helm release (rollout=helm).")
    helm_chart: str = Field(default="charts/digitloop", description="Chart to upgrade with.")
    namespace: str = Field(default="digitloop", description="Kubernetes namespace of the release.")
    routing_config_map: str = Field(
        default="digitloop-routing",
        description="ConfigMap the chart writes what serves where into (rollout=helm): read "
        "instead of the release, whose Secrets only the rollout steps may read.",
    )
    helm_binary: str = Field(default="helm", description="The helm executable.")
    inference_service: str = Field(
        default="digitloop-serving", description="The InferenceService the kserve rollout patches."
    )
    kubeconfig: str | None = Field(
        default=None,
        description="kubeconfig file for helm and KServe outside a pod; empty: "
        "$KUBECONFIG or ~/.kube/config.",
    )
    kube_context: str | None = Field(
        default=None,
        description="kubeconfig context for helm and KServe outside a pod; empty: the current one.",
    )
    rollout_timeout: int = Field(
        default=600, ge=10, description="Seconds a rollout may take to become ready."
    )
    helm_busy_wait: int = Field(
        default=240,
        ge=0,
        description="Seconds a helm rollout waits, retrying, while another Helm operation "
        "changes the release (a person's `make canary`, `make deploy`).",
    )
    helm_stuck_after: int = Field(
        default=3900,
        ge=60,
        description="Seconds after which a release still pending is stuck (its helm was "
        "killed) and is rolled back to its last deployed revision: longer than any Helm "
        "operation on it runs (make deploy: 20 min for its wait and for each of its 2 hooks).",
    )
    prometheus_url: str | None = Field(
        default=None, description="Prometheus, for canary error rate and p95 latency."
    )
    webhook_url: SecretStr | None = Field(
        default=None, description="Slack/Discord-compatible webhook told of each decision."
    )
    mlflow_ui_url: str | None = Field(
        default=None, description="Public MLflow URL for links in notifications."
    )
    holdout_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="Share of recent feedback kept out of retraining, for the gate.",
    )
    retrain_epochs: int = Field(default=3, ge=1, description="Fine-tuning epochs.")
    retrain_extra_share: float = Field(
        default=0.3, ge=0, lt=1, description="Share of each fine-tuning epoch drawn from feedback."
    )
    drift_window: int = Field(
        default=400, ge=1, description="Most recent predictions the drift step compares."
    )
    retrain_mnist_limit: int | None = Field(
        default=None,
        description="Fine-tune on the first N MNIST images only (tests, demos); unset: all.",
    )
