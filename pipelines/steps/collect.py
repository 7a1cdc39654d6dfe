"""Collect: the labelled traffic since the champion's training, and what serves now.

First it appends the feedback that arrived since the last run, joined to its predictions,
to the labelled dataset (:func:`pipelines.steps.labelling.advance`): the only join the loop
does, and it reads only what is new. Then it counts the window, from its running totals
(:mod:`pipelines.steps.totals`: the hours closed since the last run and the open tail are
read, not the window). The window starts where the champion's training data ended (its
``feedback_until`` tag), or at the epoch for a champion trained on MNIST only, and ends
now; the steps after it read the same window again (:meth:`LoopContext.window`: once per
process).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pipelines.outputs import CollectOutput
from pipelines.steps.context import LoopContext
from pipelines.steps.labelling import advance
from pipelines.steps.retrain import feedback_cutoff

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def step_collect(ctx: LoopContext) -> CollectOutput:
    """The labelled feedback since the champion's training, and what is serving now."""
    state = ctx.rollout.current()
    champion = ctx.registry.get(state.stable_model)
    since = feedback_cutoff(champion) or EPOCH
    advance(ctx.store, ctx.now)
    window = ctx.window(since, ctx.now)
    return CollectOutput(
        since=since,
        until=ctx.now,
        counts=window.counts,
        stable_version=champion.version,
        canary_version=state.canary_model,
        canary_weight=state.canary_weight,
        canary_active=state.canary_model is not None,
    )
