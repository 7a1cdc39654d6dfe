"""The loop's steps: one module each, each a function of a :class:`LoopContext` and the typed
outputs of the steps it reads (:data:`pipelines.dag.READS`), returning its own output model
(:mod:`pipelines.outputs`).

The runners call them by name: :mod:`pipelines.runners.local` in-process, one after another,
and :mod:`pipelines.runners.argo` one per Argo pod. The heavy data (images) is not handed on:
each step that needs it reads the collected window again from the store (:mod:`.window`).
"""

from __future__ import annotations

from collections.abc import Callable

from pipelines.dag import READS
from pipelines.outputs import RunOutputs, StepOutput
from pipelines.steps.analyse import step_analyse
from pipelines.steps.canary import step_canary
from pipelines.steps.collect import step_collect
from pipelines.steps.compact import step_compact
from pipelines.steps.context import LoopContext
from pipelines.steps.decide import step_decide
from pipelines.steps.drift import step_drift
from pipelines.steps.quality import step_quality
from pipelines.steps.retrain import step_retrain

__all__ = ["STEPS", "LoopContext", "call_step"]

STEPS: dict[str, Callable[..., StepOutput]] = {
    "collect": step_collect,
    "quality": step_quality,
    "drift": step_drift,
    "decide": step_decide,
    "retrain": step_retrain,
    "canary": step_canary,
    "analyse": step_analyse,
    "compact": step_compact,
}


def call_step(ctx: LoopContext, name: str, outputs: RunOutputs) -> StepOutput:
    """Run step ``name`` on the outputs it reads (:data:`pipelines.dag.READS`).

    Raises:
        RuntimeError: an output it reads is missing from ``outputs``.
    """
    upstream = {kind.name: outputs.get(kind.name) for kind in READS[name]}
    missing = [need for need, output in upstream.items() if output is None]
    if missing:
        raise RuntimeError(
            f"step {name} needs the output of {', '.join(missing)} in run {ctx.run_id}"
        )
    return STEPS[name](ctx, **upstream)
