"""Analyse: judge the canary on paired evidence, then promote it, roll it back, or wait.

Both models are scored on every labelled image logged since the canary started, whichever
track served it (neither model trained on them: the challenger's training data ends
before its canary began). :func:`pipelines.decisions.analyse` weighs that paired evidence
sequentially, with the canary's health from Prometheus when it is configured.

The step runs on every loop run while a canary serves, so it reads only from the
challenger's training cutoff on (:func:`canary_since`): its canary period, however long
the champion has served before it.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from contracts.registry import CHALLENGER_ALIAS
from model.network import predict_proba
from pipelines.decisions import CanaryEvidence, ServingHealth, analyse
from pipelines.outputs import AnalyseOutput, CollectOutput
from pipelines.paired import count_pairs
from pipelines.rollout import promoted, rolled_back, sync_aliases
from pipelines.steps.context import LoopContext
from pipelines.steps.retrain import feedback_cutoff
from pipelines.steps.window import Window


def canary_period(window: Window, collect: CollectOutput) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The answers, and the labelled answers, of the champion and the canary since the
    canary's first answer (answers of other versions are left out)."""
    served = {("stable", collect.stable_version), ("canary", collect.canary_version)}

    def ours(frame: pd.DataFrame) -> pd.DataFrame:
        keys = zip(frame["track"].astype(str), frame["model_version"].astype(str), strict=True)
        return frame[[key in served for key in keys]]

    answers = ours(window.predictions)
    on_canary = answers[answers["track"] == "canary"]
    if on_canary.empty:
        return answers.iloc[:0], window.labelled.iloc[:0]
    start = on_canary["ts"].min()
    labelled = ours(window.labelled)
    return answers[answers["ts"] >= start], labelled[labelled["ts"] >= start]


def canary_since(ctx: LoopContext, collect: CollectOutput) -> datetime:
    """Where the canary's period can start: the challenger's training cutoff (it served
    nothing before it was trained), or the window's start for one trained on MNIST only.

    Its answers, and their feedback (given after them), are all in ``[canary_since, until)``.
    """
    cutoff = feedback_cutoff(ctx.registry.get(collect.canary_version))
    return collect.since if cutoff is None else max(collect.since, cutoff)


def canary_evidence(ctx: LoopContext, collect: CollectOutput) -> CanaryEvidence:
    """Score champion and challenger on the canary period's labelled images."""
    window = ctx.window(canary_since(ctx, collect), collect.until)
    answers, labelled = canary_period(window, collect)
    images = window.images(labelled)
    truth = labelled["true_label"].to_numpy()

    def right(version: str | None) -> np.ndarray:
        net, _ = ctx.registry.load(version)
        return predict_proba(net, images).argmax(axis=1) == truth

    by_canary = (labelled["track"] == "canary").to_numpy()
    canary_answers = int((answers["track"] == "canary").sum())
    paired = count_pairs(
        served_by_canary=by_canary,
        served_right=(labelled["label"] == labelled["true_label"]).to_numpy(),
        champion_right=right(collect.stable_version),
        challenger_right=right(collect.canary_version),
        # The share it really served (requests pinned to a track included), not the weight.
        canary_share=canary_answers / len(answers) if len(answers) else 0.0,
    )
    return CanaryEvidence(
        paired=paired,
        labelled=len(labelled),
        canary_answers=canary_answers,
        canary_labelled=int(by_canary.sum()),
    )


def step_analyse(ctx: LoopContext, collect: CollectOutput) -> AnalyseOutput:
    """Judge the canary on paired evidence (and health), then promote or roll back."""
    if collect.canary_version is None:
        raise RuntimeError(f"run {ctx.run_id}: no canary to analyse (collect found none)")
    verdict = analyse(canary_evidence(ctx, collect), ctx.decisions, *_health(ctx))
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
        e_better=verdict.e_better,
        e_worse=verdict.e_worse,
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
