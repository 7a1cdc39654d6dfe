"""The loop's steps, each a function of a :class:`LoopContext` and its upstream outputs.

One way to run them: the local runner (:mod:`pipelines.runners.local`) calls them in-process, and
every Argo step (``digitloop loop step NAME``) calls the same function in its own pod.
Outputs are small JSON objects kept in the store under ``runs/<run_id>/<step>.json``, so a
step in another pod reads what came before it; the heavy data (images) is read again from
the predictions log within the same time window, which gives the same rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from contracts.registry import CHALLENGER_ALIAS
from model.data import Mnist, load_mnist
from model.registry import Registry
from model.settings import ModelSettings
from pipelines.decisions import ServingHealth, Tally, analyse, decide
from pipelines.drift.detect import DriftSettings, WindowTooSmallError, detect_drift, model_reference
from pipelines.rollout import (
    Rollout,
    make_rollout,
    promoted,
    rolled_back,
    sync_aliases,
    with_canary,
)
from pipelines.settings import DecisionSettings, LoopSettings
from pipelines.steps.collect import Window, collect
from pipelines.steps.quality import quality
from pipelines.steps.retrain import feedback_cutoff, find_retrained, judge, retrain, split_holdout
from services.store import ObjectStore, StoreSettings, open_store

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Outputs = dict[str, dict[str, Any]]


@dataclass
class LoopContext:
    """Everything a step touches, built once per process."""

    run_id: str
    loop: LoopSettings = field(default_factory=LoopSettings)
    decisions: DecisionSettings = field(default_factory=DecisionSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    store_settings: StoreSettings = field(default_factory=StoreSettings)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    _windows: dict[tuple[str, str], Window] = field(default_factory=dict, repr=False)

    @cached_property
    def store(self) -> ObjectStore:
        return open_store(self.store_settings)

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.model)

    @cached_property
    def rollout(self) -> Rollout:
        return make_rollout(self.loop)

    @cached_property
    def mnist(self) -> Mnist:
        return load_mnist(settings=self.model)

    def save(self, step: str, output: dict[str, Any]) -> None:
        self.store.put(
            f"runs/{self.run_id}/{step}.json", json.dumps(output).encode(), "application/json"
        )

    def load(self, step: str) -> dict[str, Any] | None:
        key = f"runs/{self.run_id}/{step}.json"
        return json.loads(self.store.get(key)) if self.store.exists(key) else None

    def window(self, outputs: Outputs) -> Window:
        """The collected window, read from the store once per process and time range."""
        c = outputs["collect"]
        key = (c["since"], c["until"])
        if key not in self._windows:
            self._windows[key] = collect(
                self.store, datetime.fromisoformat(c["since"]), datetime.fromisoformat(c["until"])
            )
        return self._windows[key]


# -- steps ------------------------------------------------------------------------------


def step_collect(ctx: LoopContext, outputs: Outputs) -> dict[str, Any]:
    """The labelled feedback since the champion's training, and what is serving now."""
    state = ctx.rollout.current()
    champion = ctx.registry.get(state.stable_model)
    since = feedback_cutoff(champion) or EPOCH
    window = collect(ctx.store, since, ctx.now)
    return {
        "since": since.isoformat(),
        "until": ctx.now.isoformat(),
        "counts": vars(window.counts),
        "stable_version": champion.version,
        "canary_version": state.canary_model,
        "canary_weight": state.canary_weight,
        "canary_active": state.canary_model is not None,
    }


def step_quality(ctx: LoopContext, outputs: Outputs) -> dict[str, Any]:
    """Live accuracy and per-class error rates, per model version and track."""
    return quality(ctx.window(outputs).labelled).as_dict()


def step_drift(ctx: LoopContext, outputs: Outputs) -> dict[str, Any]:
    """Evidently drift of the latest predictions against the champion's reference."""
    window = ctx.window(outputs)
    recent = window.predictions.tail(ctx.loop.drift_window)
    net, info = ctx.registry.load(outputs["collect"]["stable_version"])
    reference = model_reference(net, info, ctx.mnist.x_test, ctx.model.data_dir, ctx.drift)
    try:
        result = detect_drift(net, window.images(recent), reference, ctx.drift)
    except WindowTooSmallError as exc:
        return {"drift_detected": False, "drift_score": 0.0, "skipped": str(exc)}
    for name, data in result.report_files().items():
        ctx.store.put(
            f"reports/{ctx.run_id}/{name}",
            data,
            "text/html" if name.endswith(".html") else "application/json",
        )
    summary = result.as_dict()
    return {
        "drift_detected": summary["drift_detected"],
        "drift_score": summary["drift_score"],
        "drifted_columns": summary["drifted_columns"],
        "n_current": summary["n_current"],
        "report": f"reports/{ctx.run_id}/drift_report.html",
    }


def step_decide(ctx: LoopContext, outputs: Outputs) -> dict[str, Any]:
    """Retrain? (DESIGN.md's rule; never while a canary is being judged)."""
    if outputs["collect"]["canary_active"]:
        return {"retrain": False, "reasons": ["a canary is being judged"]}
    q, d = outputs["quality"], outputs["drift"]
    live = Tally(q["overall"]["n"], q["overall"]["correct"])
    by_class = {int(c): Tally(t["n"], t["correct"]) for c, t in q["by_class"].items()}
    decision = decide(
        outputs["collect"]["counts"]["joined"],
        d["drift_detected"],
        d["drift_score"],
        live,
        by_class,
        ctx.decisions,
    )
    return {"retrain": decision.retrain, "reasons": decision.reasons}


def step_retrain(ctx: LoopContext, outputs: Outputs) -> dict[str, Any]:
    """Fine-tune the champion on MNIST + feedback, register, and gate the challenger."""
    window = ctx.window(outputs)
    split = split_holdout(window.labelled, ctx.loop.holdout_fraction)
    champion, champion_info = ctx.registry.load(outputs["collect"]["stable_version"])
    # An Argo retry after the version was registered judges that version, not a new one.
    version = find_retrained(ctx.registry, ctx.run_id)
    if version is None:
        version = retrain(
            ctx.registry, champion, champion_info, ctx.mnist, split, ctx.loop, ctx.run_id
        ).version
    challenger, _ = ctx.registry.load(version.version)
    mnist_accuracy = float(version.tags["mnist_test_accuracy"])
    holdout_accuracy = float(version.tags.get("feedback_holdout_accuracy", "nan"))
    verdict = judge(
        champion, champion_info, challenger, mnist_accuracy, ctx.mnist, split, ctx.decisions
    )
    return {
        "challenger": version.version,
        "mlflow_run_id": version.run_id,
        "mnist_test_accuracy": mnist_accuracy,
        "holdout_accuracy": holdout_accuracy,
        "gate_passed": verdict.passed,
        "gate_reasons": verdict.reasons,
        "train_samples": len(split.train_y),
        "holdout_samples": len(split.holdout_y),
    }


def step_canary(ctx: LoopContext, outputs: Outputs) -> dict[str, Any]:
    """Roll the challenger out as a canary at the configured weight."""
    version = outputs["retrain"]["challenger"]
    state = with_canary(ctx.rollout.current(), version, ctx.decisions.new_canary_weight)
    ctx.rollout.apply(state)
    sync_aliases(ctx.registry, state)
    return {"canary": version, "weight": state.canary_weight}


def step_analyse(ctx: LoopContext, outputs: Outputs) -> dict[str, Any]:
    """Judge the canary on live accuracy (and health), then promote or roll back."""
    c = outputs["collect"]
    window = ctx.window(outputs)
    report = quality(window.labelled)
    canary = report.track("canary", c["canary_version"])
    stable = report.track("stable", c["stable_version"])
    verdict = analyse(canary, stable, ctx.decisions, *_health(ctx, c))
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
    return {
        "action": verdict.action,
        "reasons": verdict.reasons,
        "canary_version": c["canary_version"],
        "stable_version": state.stable_model,
        "p_not_worse": verdict.p_not_worse,
        "p_worse": verdict.p_worse,
        "details": verdict.details,
    }


def _health(ctx: LoopContext, collect_out: dict[str, Any]) -> tuple[ServingHealth, ServingHealth]:
    """Error rate and p95 latency per track from Prometheus, when it is configured."""
    if not ctx.loop.prometheus_url:
        return ServingHealth(), ServingHealth()
    from pipelines.prometheus import track_health

    return track_health(ctx.loop.prometheus_url, "canary"), track_health(
        ctx.loop.prometheus_url, "stable"
    )


STEPS: dict[str, Callable[[LoopContext, Outputs], dict[str, Any]]] = {
    "collect": step_collect,
    "quality": step_quality,
    "drift": step_drift,
    "decide": step_decide,
    "retrain": step_retrain,
    "canary": step_canary,
    "analyse": step_analyse,
}
