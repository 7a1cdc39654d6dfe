"""Finish, the exit handler of every run: its summary in the store and MLflow, the webhook.

It runs whatever happened before it (Argo's ``onExit``), so it reads only the outputs of the
steps that ran.
"""

from __future__ import annotations

from pipelines.notify import message, notify
from pipelines.outputs import RunOutputs, Summary
from pipelines.steps.context import LoopContext


def summarise(run_id: str, outputs: RunOutputs) -> Summary:
    """One line of what happened, for people, MLflow and the webhook."""
    if (analysed := outputs.analyse) is not None:
        outcome = {
            "promote": f"promoted v{analysed.canary_version}",
            "rollback": f"rolled back v{analysed.canary_version}",
            "wait": f"canary v{analysed.canary_version} still being judged",
        }[analysed.action]
        reasons = analysed.reasons
    elif outputs.canary is not None and outputs.retrain is not None:
        outcome = f"canary v{outputs.canary.canary} at {outputs.canary.weight} %"
        reasons = (outputs.decide.reasons if outputs.decide else ()) + outputs.retrain.gate_reasons
    elif outputs.retrain is not None:
        outcome = f"challenger v{outputs.retrain.challenger} failed the gate"
        reasons = outputs.retrain.gate_reasons
    else:
        outcome = "no change"
        reasons = outputs.decide.reasons if outputs.decide else ()
    overall = outputs.quality.overall if outputs.quality else None
    return Summary(
        run_id=run_id,
        outcome=outcome,
        reasons=reasons,
        drift_detected=outputs.drift.drift_detected if outputs.drift else None,
        drift_score=outputs.drift.drift_score if outputs.drift else None,
        live_accuracy=overall.labelled_accuracy if overall else None,
        estimated_accuracy=overall.estimated_accuracy if overall else None,
        labelled=overall.labelled if overall else None,
        challenger=outputs.retrain.challenger if outputs.retrain else None,
        canary=outputs.canary.canary if outputs.canary else None,
        mlflow_run_id=outputs.retrain.mlflow_run_id if outputs.retrain else None,
        steps=outputs.ran,
    )


def finish(ctx: LoopContext, outputs: RunOutputs) -> Summary:
    """The exit handler: summary in the store and MLflow, then the webhook."""
    summary = summarise(ctx.run_id, outputs)
    ctx.save(summary)
    _log_to_mlflow(ctx, summary, outputs)
    report = outputs.drift.report if outputs.drift else None
    webhook = ctx.loop.webhook_url.get_secret_value() if ctx.loop.webhook_url else None
    body = message(summary.model_dump(mode="json"), ctx.loop.mlflow_ui_url, report)
    return summary.model_copy(update={"notified": notify(webhook, body)})


def _log_to_mlflow(ctx: LoopContext, summary: Summary, outputs: RunOutputs) -> None:
    import mlflow

    ctx.registry  # noqa: B018 - points MLflow at the configured store
    experiment = mlflow.set_experiment(f"{ctx.model.mlflow_experiment}-loop")
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=ctx.run_id):
        mlflow.set_tags({"outcome": summary.outcome, "loop_run": ctx.run_id})
        metrics = {
            name: float(value)
            for name, value in (
                ("drift_score", summary.drift_score),
                ("live_accuracy", summary.live_accuracy),
                ("estimated_accuracy", summary.estimated_accuracy),
            )
            if value is not None
        }
        mlflow.log_metrics(metrics)
        mlflow.log_dict(outputs.model_dump(mode="json", exclude_none=True), "outputs.json")
        mlflow.log_dict(summary.model_dump(mode="json"), "summary.json")
        if outputs.drift is not None and outputs.drift.report is not None:
            html = ctx.store.get(outputs.drift.report)
            mlflow.log_text(html.decode(), "drift_report.html")
        if outputs.drift is not None and outputs.drift.novelty_clusters is not None:
            import io

            from PIL import Image

            png = ctx.store.get(outputs.drift.novelty_clusters)
            mlflow.log_image(Image.open(io.BytesIO(png)), "novelty_clusters.png")
