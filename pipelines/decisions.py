"""The loop's three decisions as pure functions: retrain?, does the challenger pass?, and
what to do with the canary. Inputs are counts and scores; no I/O, so every boundary is a
table-driven unit test (tests/unit/test_decisions.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from statsmodels.stats.proportion import test_proportions_2indep

from pipelines.settings import DecisionSettings


@dataclass(frozen=True)
class Tally:
    """Labelled predictions of one population: how many, and how many were right."""

    n: int
    correct: int

    def __post_init__(self) -> None:
        if not 0 <= self.correct <= self.n:
            raise ValueError(f"correct must be within 0..n, got {self.correct} of {self.n}")

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


# -- retrain? -------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reasons: list[str]


def decide(
    new_labels: int,
    drift_detected: bool,
    drift_score: float,
    live: Tally,
    class_tallies: dict[int, Tally],
    settings: DecisionSettings,
) -> RetrainDecision:
    """Retrain when enough new labels came in AND something says the model lags.

    The triggers: the drift step flagged the window, live accuracy fell below its
    threshold, or some class (with enough samples) errs too often.
    """
    triggers: list[str] = []
    if drift_detected:
        triggers.append(f"drift detected (score {drift_score:.2f})")
    if live.n and live.accuracy < settings.accuracy_threshold:
        triggers.append(f"live accuracy {live.accuracy:.3f} < {settings.accuracy_threshold}")
    for label, tally in sorted(class_tallies.items()):
        if tally.n >= settings.min_class_samples:
            error = (tally.n - tally.correct) / tally.n  # exact at the boundary, unlike 1 - acc
            if error >= settings.class_error_threshold:
                triggers.append(
                    f"class {label} error rate {error:.2f} >= {settings.class_error_threshold}"
                )
    if new_labels < settings.min_new_labels:
        why = f"{new_labels} new labels < {settings.min_new_labels} needed"
        return RetrainDecision(False, [why, *triggers] if triggers else [why])
    if not triggers:
        return RetrainDecision(False, ["no drift, accuracy and class errors within thresholds"])
    return RetrainDecision(True, triggers)


# -- gate -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str]
    mnist_delta: float
    holdout_delta: float


def gate(
    champion_mnist: float,
    challenger_mnist: float,
    champion_holdout: Tally,
    challenger_holdout: Tally,
    settings: DecisionSettings,
) -> GateResult:
    """The challenger may lose at most ``max_mnist_regression`` on MNIST test and must
    beat the champion on feedback neither trained on (the same held-out samples)."""
    if champion_holdout.n != challenger_holdout.n:
        raise ValueError("both models must be scored on the same held-out samples")
    mnist_delta = challenger_mnist - champion_mnist
    holdout_delta = challenger_holdout.accuracy - champion_holdout.accuracy
    reasons = []
    # Accuracies are counts over 10,000 images: a 1e-9 slack absorbs float rounding only.
    if -mnist_delta > settings.max_mnist_regression + 1e-9:
        reasons.append(
            f"MNIST accuracy fell by {-mnist_delta:.4f} (> {settings.max_mnist_regression})"
        )
    if champion_holdout.n == 0:
        reasons.append("no held-out feedback to compare on")
    elif not holdout_delta > settings.min_holdout_gain:
        reasons.append(
            f"held-out feedback accuracy {challenger_holdout.accuracy:.3f} does not "
            f"beat the champion's {champion_holdout.accuracy:.3f}"
        )
    if reasons:
        return GateResult(False, reasons, mnist_delta, holdout_delta)
    return GateResult(
        True,
        [f"MNIST {mnist_delta:+.4f}, held-out feedback {holdout_delta:+.3f}"],
        mnist_delta,
        holdout_delta,
    )


# -- canary ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServingHealth:
    """Error rate and p95 latency of one track, from Prometheus when it is there."""

    error_rate: float | None = None
    p95_latency_s: float | None = None


@dataclass(frozen=True)
class CanaryVerdict:
    action: Literal["wait", "promote", "rollback"]
    reasons: list[str]
    p_not_worse: float | None = None  # non-inferiority test: small means "not worse"
    p_worse: float | None = None  # superiority of stable: small means "worse"
    details: dict[str, float] = field(default_factory=dict)


def analyse(
    canary: Tally,
    stable: Tally,
    settings: DecisionSettings,
    canary_health: ServingHealth = ServingHealth(),
    stable_health: ServingHealth = ServingHealth(),
) -> CanaryVerdict:
    """Promote a canary shown not worse than stable, roll back one shown worse.

    Two one-sided tests on the difference of live accuracies (independent samples):
    non-inferiority with margin ``non_inferiority_margin`` (H0: canary <= stable - margin),
    and inferiority (H0: canary >= stable). Undecided canaries wait for more labels, up
    to ``canary_max_samples``; then they are rolled back. Error rate and p95 latency,
    when known, must hold as well.
    """
    if canary.n < settings.canary_min_samples:
        return CanaryVerdict(
            "wait",
            [f"{canary.n} labelled canary predictions < {settings.canary_min_samples} needed"],
        )
    if stable.n == 0:
        return CanaryVerdict("wait", ["no labelled stable predictions to compare with"])

    health = _health_problems(canary_health, stable_health, settings)
    p_not_worse = _p_value(
        canary, stable, margin=settings.non_inferiority_margin, alternative="larger"
    )
    p_worse = _p_value(canary, stable, margin=0.0, alternative="smaller")
    details = {
        "canary_accuracy": canary.accuracy,
        "stable_accuracy": stable.accuracy,
        "canary_n": canary.n,
        "stable_n": stable.n,
    }
    summary = (
        f"canary {canary.accuracy:.3f} (n={canary.n}) vs stable {stable.accuracy:.3f} "
        f"(n={stable.n})"
    )
    if health:
        return CanaryVerdict("rollback", health, p_not_worse, p_worse, details)
    if p_worse < settings.alpha:
        return CanaryVerdict(
            "rollback", [f"{summary}: worse (p={p_worse:.3g})"], p_not_worse, p_worse, details
        )
    if p_not_worse < settings.alpha:
        return CanaryVerdict(
            "promote",
            [f"{summary}: not worse (p={p_not_worse:.3g})"],
            p_not_worse,
            p_worse,
            details,
        )
    if canary.n >= settings.canary_max_samples:
        return CanaryVerdict(
            "rollback",
            [f"{summary}: still undecided after {canary.n} samples"],
            p_not_worse,
            p_worse,
            details,
        )
    return CanaryVerdict(
        "wait", [f"{summary}: undecided (p={p_not_worse:.3g})"], p_not_worse, p_worse, details
    )


def _p_value(
    canary: Tally, stable: Tally, margin: float, alternative: Literal["larger", "smaller"]
) -> float:
    """One-sided p-value for canary - stable vs -margin (score test, safe at 0 % and 100 %)."""
    # statsmodels also computes an odds ratio, which divides by zero at 0 % or 100 %.
    with np.errstate(divide="ignore", invalid="ignore"):
        result = test_proportions_2indep(
            canary.correct,
            canary.n,
            stable.correct,
            stable.n,
            value=-margin,
            compare="diff",
            alternative=alternative,
            method="score",
        )
    p_value = float(result.pvalue)
    return 1.0 if np.isnan(p_value) else p_value  # identical all-or-nothing samples


def _health_problems(
    canary: ServingHealth, stable: ServingHealth, settings: DecisionSettings
) -> list[str]:
    problems = []
    if (
        canary.error_rate is not None
        and stable.error_rate is not None
        and canary.error_rate > stable.error_rate + settings.max_error_rate_increase
    ):
        problems.append(
            f"canary error rate {canary.error_rate:.3f} > stable "
            f"{stable.error_rate:.3f} + {settings.max_error_rate_increase}"
        )
    if (
        canary.p95_latency_s is not None
        and stable.p95_latency_s
        and canary.p95_latency_s > stable.p95_latency_s * settings.max_p95_latency_ratio
    ):
        problems.append(
            f"canary p95 latency {canary.p95_latency_s * 1000:.0f} ms > "
            f"{settings.max_p95_latency_ratio}x stable's "
            f"{stable.p95_latency_s * 1000:.0f} ms"
        )
    return problems
