"""Decide: retrain or not, by DESIGN.md's rule (:func:`pipelines.decisions.decide`)."""

from __future__ import annotations

from pipelines.decisions import decide
from pipelines.outputs import CollectOutput, DecideOutput, DriftOutput, QualityOutput
from pipelines.steps.context import LoopContext


def step_decide(
    ctx: LoopContext, collect: CollectOutput, quality: QualityOutput, drift: DriftOutput
) -> DecideOutput:
    """Retrain? (DESIGN.md's rule; never while a canary is being judged)."""
    if collect.canary_active:
        return DecideOutput(retrain=False, reasons=("a canary is being judged",))
    decision = decide(
        collect.counts.joined,
        drift.drift_detected,
        drift.drift_score,
        quality.overall,
        quality.by_answer,
        ctx.decisions,
    )
    return DecideOutput(retrain=decision.retrain, reasons=tuple(decision.reasons))
