"""Decide: retrain or not, by DESIGN.md's rule (:func:`pipelines.decisions.decide`)."""

from __future__ import annotations

from pipelines.decisions import decide
from pipelines.outputs import (
    AnswerQuality,
    CollectOutput,
    DecideOutput,
    DriftOutput,
    QualityOutput,
)
from pipelines.steps.context import LoopContext


def step_decide(
    ctx: LoopContext, collect: CollectOutput, quality: QualityOutput, drift: DriftOutput
) -> DecideOutput:
    """Retrain? (DESIGN.md's rule; never while a canary is being judged)."""
    if collect.canary_active:
        return DecideOutput(retrain=False, reasons=("a canary is being judged",))
    # Only the champion's own answers say how it does: the window since its training also
    # holds the answers of the version it replaced, and of its canary days.
    champion = quality.by_track.get(
        f"stable:v{collect.stable_version}", AnswerQuality(answers=0, confirmed=0, corrected=0)
    )
    decision = decide(
        collect.counts.joined,
        drift.drift_detected,
        drift.drift_score,
        champion,
        quality.by_answer,
        ctx.decisions,
        drift_reason=_novelty_reason(drift),
    )
    return DecideOutput(retrain=decision.retrain, reasons=tuple(decision.reasons))


def _novelty_reason(drift: DriftOutput) -> str | None:
    """Why the window drifted when the novelty test said so; None when Evidently alone did."""
    if not drift.novelty_detected or drift.novelty_share is None:
        return None
    evidently = "and" if drift.evidently_drift_detected else "not"
    expected = drift.novelty_share * drift.n_current
    return (
        f"drift detected: {drift.novelty_flagged} unusual drawings of {drift.n_current} "
        f"({expected:.0f} expected, p = {drift.novelty_p_value:.2g}), {evidently} in "
        f"Evidently's columns (score {drift.drift_score:.2f})"
    )
