"""The loop's DAG, run in-process: the same steps, order and conditions as the Argo
workflow (:mod:`pipelines.workflows`), for the embedded stack and for tests.

    collect -> quality ----------------------------+-> decide -> retrain -> canary
            -> drift   (no canary being judged) ---+      (when retrain)  (when gate passed)
            -> analyse (a canary being judged) -> promote | rollback
    compact (the store's upkeep, beside the others on Argo; here last)
    exit: summary in the store, a run in MLflow, the webhook
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from pipelines.dag import ORDER, should_run
from pipelines.outputs import (
    AnalyseOutput,
    AnswerQuality,
    CanaryOutput,
    CollectOutput,
    CompactOutput,
    DecideOutput,
    DriftOutput,
    QualityOutput,
    RetrainOutput,
    RunOutputs,
    StepOutput,
)
from pipelines.steps import LoopContext, call_step
from pipelines.steps.finish import finish


def run_once(ctx: LoopContext, console: Console | None = None) -> dict[str, Any]:
    """Run the whole DAG once, in order, printing each step and its outcome.

    Returns:
        The run's :class:`~pipelines.outputs.Summary` as JSON (``digitloop loop run --json``).
    """
    console = console or Console(stderr=True)
    outputs = RunOutputs()
    for name in ORDER:
        if not should_run(name, outputs):
            console.print(f"  [dim]{name:8} skipped[/]")
            continue
        started = time.perf_counter()
        output = call_step(ctx, name, outputs)
        ctx.save(output)
        outputs = outputs.with_output(output)
        console.print(
            f"  [bold]{name:8}[/] {outcome(output)} [dim]({time.perf_counter() - started:.1f}s)[/]"
        )
    summary = finish(ctx, outputs)
    console.print(f"[bold]run {ctx.run_id}:[/] {summary.outcome}")
    return summary.model_dump(mode="json")


def quality_line(quality: AnswerQuality) -> str:
    """Answers, what people said of them, and the label-free estimate."""
    parts = [f"{quality.answers} answers"]
    if quality.labelled:
        parts.append(
            f"{quality.confirmed} confirmed, {quality.corrected} corrected "
            f"(labelled accuracy {quality.labelled_accuracy:.3f})"
        )
    else:
        parts.append("no labels")
    if quality.estimated_accuracy is not None:
        parts.append(f"estimated accuracy {quality.estimated_accuracy:.3f}")
    return ", ".join(parts)


def outcome(output: StepOutput) -> str:
    """One line of what a step found, for the console."""
    match output:
        case CollectOutput(counts=c):
            canary = f", canary v{output.canary_version}" if output.canary_active else ""
            return (
                f"{c.predictions} predictions, {c.joined} labelled "
                f"({c.pending} pending, {c.orphaned} orphaned); "
                f"stable v{output.stable_version}{canary}"
            )
        case QualityOutput(overall=quality):
            return quality_line(quality)
        case DriftOutput(skipped=str(why)):
            return f"skipped: {why}"
        case DriftOutput():
            verdict = "DRIFT" if output.drift_detected else "no drift"
            return f"score {output.drift_score:.2f} -> {verdict}"
        case DecideOutput():
            return ("retrain: " if output.retrain else "no retrain: ") + "; ".join(output.reasons)
        case RetrainOutput():
            holdout = (
                f"held-out feedback {output.holdout_accuracy:.3f}"
                if output.holdout_accuracy is not None
                else "no held-out feedback"
            )
            return (
                f"v{output.challenger}: MNIST {output.mnist_test_accuracy:.4f}, {holdout}, gate "
                f"{'passed' if output.gate_passed else 'failed'}"
            )
        case CanaryOutput():
            return f"v{output.canary} at {output.weight} %"
        case AnalyseOutput():
            return f"{output.action}: {'; '.join(output.reasons)}"
        case CompactOutput():
            merged = ", ".join(f"{name} {hours}" for name, hours in output.partitions.items())
            return (
                f"hours merged: {merged or 'none'}; {output.expired} objects past retention deleted"
            )
    return output.model_dump_json()[:120]
