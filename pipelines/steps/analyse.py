"""Analyse: judge the canary on live evidence, then promote it, roll it back, or wait.

The evidence is the window's labelled predictions of each track (:func:`pipelines.decisions.
analyse`), and, when Prometheus is configured, each track's error rate and p95 latency.
"""

from __future__ import annotations

from contracts.registry import CHALLENGER_ALIAS
from pipelines.decisions import ServingHealth, analyse
from pipelines.outputs import AnalyseOutput, CollectOutput
from pipelines.rollout import promoted, rolled_back, sync_aliases
from pipelines.steps.context import LoopContext
from pipelines.steps.quality import quality


def step_analyse(ctx: LoopContext, collect: CollectOutput) -> AnalyseOutput:
    """Judge the canary on live accuracy (and health), then promote or roll back."""
    if collect.canary_version is None:
        raise RuntimeError(f"run {ctx.run_id}: no canary to analyse (collect found none)")
    report = quality(ctx.window(collect.since, collect.until).labelled)
    canary = report.track("canary", collect.canary_version)
    stable = report.track("stable", collect.stable_version)
    verdict = analyse(canary, stable, ctx.decisions, *_health(ctx))
    current = ctx.rollout.current()
    if verdict.action == "promote":
        state = promoted(current)
    elif verdict.action == "rollback":
        state = rolled_back(current)
        ctx.registry.delete_alias(CHALLENGER_ALIAS)
    else:
        state = current
    if state != current:
        ctx.rollout.apply(state)
        sync_aliases(ctx.registry, state)
    return AnalyseOutput(
        action=verdict.action,
        reasons=tuple(verdict.reasons),
        canary_version=collect.canary_version,
        stable_version=state.stable_model,
        p_not_worse=verdict.p_not_worse,
        p_worse=verdict.p_worse,
        details=verdict.details,
    )


def _health(ctx: LoopContext) -> tuple[ServingHealth, ServingHealth]:
    """Error rate and p95 latency of the canary and stable tracks, when Prometheus is set."""
    if not ctx.loop.prometheus_url:
        return ServingHealth(), ServingHealth()
    from pipelines.prometheus import track_health

    return track_health(ctx.loop.prometheus_url, "canary"), track_health(
        ctx.loop.prometheus_url, "stable"
    )
