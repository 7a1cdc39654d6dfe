"""The loop's three decisions as pure functions: retrain?, does the challenger pass?, and
what to do with the canary. Inputs are counts and scores; no I/O, so every boundary is a
table-driven unit test (tests/unit/test_decisions.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipelines.outputs import AnswerQuality
from pipelines.paired import PairedCounts, e_values
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
    overall: AnswerQuality,
    by_answer: dict[int, AnswerQuality],
    settings: DecisionSettings,
    drift_reason: str | None = None,
) -> RetrainDecision:
    """Retrain when enough new labels came in AND something says the model lags.

    ``drift_reason`` says why the drift step flagged the window, when it was not Evidently's
    share of columns (``drift_score``) alone.

    The triggers: the drift step flagged the window; so many answers were corrected that
    accuracy must be under its threshold; the label-free estimate is under it (when
    ``estimate_trigger`` is on); or people correct some digit the model answers too often.
    Corrections are counted per *answer*, not per labelled answer: people who only correct
    wrong answers would otherwise make every model look wrong.
    """
    triggers: list[str] = []
    if drift_detected:
        triggers.append(drift_reason or f"drift detected (score {drift_score:.2f})")
    if overall.answers:
        ceiling = (overall.answers - overall.corrected) / overall.answers
        if ceiling < settings.accuracy_threshold:
            triggers.append(
                f"{overall.corrected} of {overall.answers} answers corrected: live accuracy "
                f"at most {ceiling:.3f} < {settings.accuracy_threshold}"
            )
    estimate = overall.estimated_accuracy
    if (
        settings.estimate_trigger
        and estimate is not None
        and estimate < settings.accuracy_threshold
    ):
        triggers.append(f"estimated accuracy {estimate:.3f} < {settings.accuracy_threshold}")
    for digit, answered in sorted(by_answer.items()):
        if answered.answers >= settings.min_class_samples:
            share = answered.corrected / answered.answers
            if share >= settings.class_error_threshold:
                triggers.append(
                    f"answers {digit} corrected {share:.2f} of the time "
                    f">= {settings.class_error_threshold}"
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
class CanaryEvidence:
    """What the canary's period shows: the paired counts, and how much the canary served."""

    paired: PairedCounts
    labelled: int  # labelled answers of the period, both tracks
    canary_answers: int  # answers the canary served in the period
    canary_labelled: int = 0  # of which labelled


@dataclass(frozen=True)
class CanaryVerdict:
    action: Literal["wait", "promote", "rollback"]
    reasons: list[str]
    e_better: float | None = None  # evidence the challenger is better: promote at 1/alpha
    e_worse: float | None = None  # evidence it is worse: roll back at 1/alpha
    details: dict[str, float] = field(default_factory=dict)
    # What decided it: the paired evidence, the canary's health, or the label budget.
    basis: Literal["evidence", "health", "budget"] | None = None


def analyse(
    evidence: CanaryEvidence,
    settings: DecisionSettings,
    canary_health: ServingHealth = ServingHealth(),
    stable_health: ServingHealth = ServingHealth(),
) -> CanaryVerdict:
    """Promote a canary shown better than the champion, roll back one shown worse.

    The evidence is paired (both models scored on the same labelled images, neither trained
    on them) and sequential (:mod:`pipelines.paired`: e-values that keep their error rates
    however many runs look). Promotion also needs the canary to have served
    ``canary_min_answers`` answers with its error rate and p95 latency holding (when
    Prometheus tells them). An undecided canary is rolled back once its period has
    ``canary_max_labels`` labelled answers: the champion stays unless it is shown beaten.
    """
    paired = evidence.paired
    e = e_values(paired)
    details = {
        "for_challenger": float(paired.for_challenger),
        "for_champion": float(paired.for_champion),
        "labelled": float(evidence.labelled),
        "canary_answers": float(evidence.canary_answers),
        "canary_labelled": float(evidence.canary_labelled),
        "canary_share": paired.canary_share,
        "e_better": e.better,
        "e_worse": e.worse,
    }
    if e.psi_hat is not None:
        details["psi_hat"] = e.psi_hat
    summary = (
        f"{paired.for_challenger} labelled images favour the challenger, "
        f"{paired.for_champion} the champion ({evidence.labelled} labelled)"
    )

    def verdict(
        action: Literal["wait", "promote", "rollback"],
        reason: str,
        basis: Literal["evidence", "health", "budget"] | None = "evidence",
    ) -> CanaryVerdict:
        return CanaryVerdict(action, [reason], e.better, e.worse, details, basis)

    health = _health_problems(canary_health, stable_health, settings)
    if health:
        return CanaryVerdict("rollback", health, e.better, e.worse, details, "health")
    if e.worse >= 1 / settings.false_rollback_rate:
        return verdict("rollback", f"{summary}: worse (e={e.worse:.3g})")
    if e.better >= 1 / settings.false_promotion_rate:
        if evidence.canary_answers < settings.canary_min_answers:
            return verdict(
                "wait",
                f"{summary}: better (e={e.better:.3g}), but the canary served "
                f"{evidence.canary_answers} answers < {settings.canary_min_answers}",
                None,
            )
        return verdict("promote", f"{summary}: better (e={e.better:.3g})")
    if evidence.labelled >= settings.canary_max_labels:
        return verdict(
            "rollback",
            f"{summary}: still undecided after {evidence.labelled} labelled answers",
            "budget",
        )
    needed = 1 / settings.false_promotion_rate
    return verdict(
        "wait", f"{summary}: undecided (e={e.better:.3g}, promotes at {needed:.3g})", None
    )


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
