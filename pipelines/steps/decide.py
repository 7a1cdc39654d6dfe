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
        drift_reason=_per_drawing_reason(drift),
    )
    return DecideOutput(retrain=decision.retrain, reasons=tuple(decision.reasons))


def _per_drawing_reason(drift: DriftOutput) -> str | None:
    """Why the window drifted when a per-drawing test (novelty, geometry) said so; None when
    Evidently alone did."""
    tests = (
        ("unusual drawings", drift.novelty_detected, drift.novelty_flagged,
         drift.novelty_share, drift.novelty_p_value),
        ("drawings of unusual stroke geometry", drift.geometry_detected, drift.geometry_flagged,
         drift.geometry_share, drift.geometry_p_value),
    )  # fmt: skip
    found = [
        f"{flagged} {what} of {drift.n_current} "
        f"({share * drift.n_current:.0f} expected, p = {p_value:.2g})"
        for what, detected, flagged, share, p_value in tests
        if detected and share is not None
    ]
    if not found:
        return None
    evidently = "and" if drift.evidently_drift_detected else "not"
    return (
        f"drift detected: {'; '.join(found)}, {evidently} in Evidently's columns "
        f"(score {drift.drift_score:.2f})"
    )
