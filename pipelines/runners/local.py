"""The loop's DAG, run in-process: the same steps, order and conditions as the Argo
workflow (:mod:`pipelines.workflows`), for the embedded stack and for tests.

    collect -> quality ----------------------------+-> decide -> retrain -> canary
            -> drift   (no canary being judged) ---+      (when retrain)  (when gate passed)
            -> analyse (a canary being judged) -> promote | rollback
    exit: summary in the store, a run in MLflow, the webhook
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from rich.console import Console

from pipelines.dag import NEEDS, ORDER, should_run
from pipelines.notify import message, notify
from pipelines.steps import STEPS, LoopContext, Outputs

log = logging.getLogger(__name__)


def summarise(run_id: str, outputs: Outputs) -> dict[str, Any]:
    """One line of what happened, for people, MLflow and the webhook."""
    if "analyse" in outputs:
        a = outputs["analyse"]
        outcome = {
            "promote": f"promoted v{a['canary_version']}",
            "rollback": f"rolled back v{a['canary_version']}",
            "wait": f"canary v{a['canary_version']} still being judged",
        }[a["action"]]
        reasons = a["reasons"]
    elif "canary" in outputs:
        outcome = f"canary v{outputs['canary']['canary']} at {outputs['canary']['weight']} %"
        reasons = outputs["decide"]["reasons"] + outputs["retrain"]["gate_reasons"]
    elif "retrain" in outputs:
        outcome = f"challenger v{outputs['retrain']['challenger']} failed the gate"
        reasons = outputs["retrain"]["gate_reasons"]
    else:
        outcome = "no change"
        reasons = outputs.get("decide", {}).get("reasons", [])
    quality = outputs.get("quality", {}).get("overall", {})
    return {
        "run_id": run_id,
        "outcome": outcome,
        "reasons": reasons,
        "drift_detected": outputs.get("drift", {}).get("drift_detected"),
        "drift_score": outputs.get("drift", {}).get("drift_score"),
        "live_accuracy": quality.get("accuracy"),
        "labelled": quality.get("n"),
        "challenger": outputs.get("retrain", {}).get("challenger"),
        "canary": outputs.get("canary", {}).get("canary"),
        "mlflow_run_id": outputs.get("retrain", {}).get("mlflow_run_id"),
        "steps": list(outputs),
    }


def run_step(ctx: LoopContext, name: str) -> dict[str, Any]:
    """One step as an Argo pod runs it: upstream outputs from the store, its own to it."""
    upstream = {need: ctx.load(need) for need in NEEDS[name]}
    missing = [need for need, out in upstream.items() if out is None]
    if missing:
        raise RuntimeError(
            f"step {name} needs the output of {', '.join(missing)} in run {ctx.run_id}"
        )
    output = STEPS[name](ctx, upstream)  # type: ignore[arg-type]
    ctx.save(name, output)
    return output


def finish(ctx: LoopContext, outputs: Outputs) -> dict[str, Any]:
    """The exit handler: summary in the store and MLflow, then the webhook."""
    summary = summarise(ctx.run_id, outputs)
    ctx.save("summary", summary)
    _log_to_mlflow(ctx, summary, outputs)
    report = outputs.get("drift", {}).get("report")
    webhook = ctx.loop.webhook_url.get_secret_value() if ctx.loop.webhook_url else None
    summary["notified"] = notify(webhook, message(summary, ctx.loop.mlflow_ui_url, report))
    return summary


def run_once(ctx: LoopContext, console: Console | None = None) -> dict[str, Any]:
    """Run the whole DAG once, in order, printing each step and its outcome."""
    console = console or Console(stderr=True)
    outputs: Outputs = {}
    for name in ORDER:
        if not should_run(name, outputs):
            console.print(f"  [dim]{name:8} skipped[/]")
            continue
        started = time.perf_counter()
        outputs[name] = STEPS[name](ctx, {k: outputs[k] for k in NEEDS[name]})
        ctx.save(name, outputs[name])
        console.print(
            f"  [bold]{name:8}[/] {_outcome(name, outputs[name])} "
            f"[dim]({time.perf_counter() - started:.1f}s)[/]"
        )
    summary = finish(ctx, outputs)
    console.print(f"[bold]run {ctx.run_id}:[/] {summary['outcome']}")
    return summary


def _outcome(name: str, output: dict[str, Any]) -> str:
    match name:
        case "collect":
            c = output["counts"]
            return (
                f"{c['predictions']} predictions, {c['joined']} labelled "
                f"({c['pending']} pending, {c['orphaned']} orphaned); "
                f"stable v{output['stable_version']}"
                + (f", canary v{output['canary_version']}" if output["canary_active"] else "")
            )
        case "quality":
            o = output["overall"]
            return f"live accuracy {o['accuracy']:.3f} on {o['n']}" if o["n"] else "no labels"
        case "drift":
            if "skipped" in output:
                return f"skipped: {output['skipped']}"
            return (
                f"score {output['drift_score']:.2f} -> "
                f"{'DRIFT' if output['drift_detected'] else 'no drift'}"
            )
        case "decide":
            return ("retrain: " if output["retrain"] else "no retrain: ") + "; ".join(
                output["reasons"]
            )
        case "retrain":
            return (
                f"v{output['challenger']}: MNIST {output['mnist_test_accuracy']:.4f}, "
                f"held-out feedback {output['holdout_accuracy']:.3f}, gate "
                f"{'passed' if output['gate_passed'] else 'failed'}"
            )
        case "canary":
            return f"v{output['canary']} at {output['weight']} %"
        case "analyse":
            return f"{output['action']}: {'; '.join(output['reasons'])}"
    return json.dumps(output)[:120]


def _log_to_mlflow(ctx: LoopContext, summary: dict[str, Any], outputs: Outputs) -> None:
    import mlflow

    ctx.registry  # noqa: B018 - points MLflow at the configured store
    experiment = mlflow.set_experiment(f"{ctx.model.mlflow_experiment}-loop")
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=ctx.run_id):
        mlflow.set_tags({"outcome": summary["outcome"], "loop_run": ctx.run_id})
        metrics = {
            k: float(summary[k])
            for k in ("drift_score", "live_accuracy")
            if summary.get(k) is not None
        }
        mlflow.log_metrics(metrics)
        mlflow.log_dict(outputs, "outputs.json")
        mlflow.log_dict(summary, "summary.json")
        if "report" in outputs.get("drift", {}):
            html = ctx.store.get(outputs["drift"]["report"])
            mlflow.log_text(html.decode(), "drift_report.html")
