"""Drift: Evidently's check of the latest predictions against the champion's reference.

A window with too few predictions is no verdict: the step says why and reports no drift.
The report (HTML and JSON) goes to the store under ``reports/<run_id>/``.
"""

from __future__ import annotations

from pipelines.drift.detect import WindowTooSmallError, detect_drift, model_reference
from pipelines.outputs import CollectOutput, DriftOutput
from pipelines.steps.context import LoopContext


def step_drift(ctx: LoopContext, collect: CollectOutput) -> DriftOutput:
    """Evidently drift of the latest predictions against the champion's reference."""
    window = ctx.window(collect.since, collect.until)
    recent = window.predictions.tail(ctx.loop.drift_window)
    net, info = ctx.registry.load(collect.stable_version)
    reference = model_reference(net, info, ctx.mnist.x_test, ctx.model.data_dir, ctx.drift)
    try:
        result = detect_drift(net, window.images(recent), reference, ctx.drift)
    except WindowTooSmallError as exc:
        return DriftOutput(drift_detected=False, drift_score=0.0, skipped=str(exc))
    for name, data in result.report_files().items():
        ctx.store.put(
            f"reports/{ctx.run_id}/{name}",
            data,
            "text/html" if name.endswith(".html") else "application/json",
        )
    return DriftOutput(
        drift_detected=result.drift_detected,
        drift_score=result.drift_score,
        drifted_columns=tuple(result.drifted_columns),
        n_current=result.n_current,
        report=f"reports/{ctx.run_id}/drift_report.html",
    )
