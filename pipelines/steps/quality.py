"""Quality: how the answers fared, overall, per model version and track, per digit.

People label a minority of answers, and many only correct wrong ones, so three figures
are kept apart: the accuracy over labelled answers, the corrected share of all answers
(a floor on the error rate, however people label), and a label-free estimate from the
model's calibrated probabilities (:func:`model.calibration.expected_accuracy`).

The figures come from the window's running totals (:mod:`pipelines.steps.totals`), not
from its rows: a run reads the hours closed since the last run and the open tail, so its
cost is the same for a champion a day old and one a month old.
"""

from __future__ import annotations

from pipelines.outputs import CollectOutput, QualityOutput
from pipelines.steps.context import LoopContext


def step_quality(ctx: LoopContext, collect: CollectOutput) -> QualityOutput:
    """Labelled accuracy, corrected share and label-free estimate, per track and digit."""
    window = ctx.window(collect.since, collect.until)
    return window.totals.quality(collect.stable_version)
