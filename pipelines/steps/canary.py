"""Canary: serve the challenger that passed its gate to a share of the traffic."""

from __future__ import annotations

from pipelines.outputs import CanaryOutput, RetrainOutput
from pipelines.rollout import sync_aliases, with_canary
from pipelines.steps.context import LoopContext


def step_canary(ctx: LoopContext, retrain: RetrainOutput) -> CanaryOutput:
    """Roll the challenger out as a canary at the configured weight."""
    state = with_canary(ctx.rollout.current(), retrain.challenger, ctx.decisions.new_canary_weight)
    ctx.rollout.apply(state)
    sync_aliases(ctx.registry, state)
    return CanaryOutput(canary=retrain.challenger, weight=state.canary_weight)
