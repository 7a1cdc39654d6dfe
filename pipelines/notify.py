"""Notify: tell a Slack- or Discord-compatible webhook what the loop decided."""

from __future__ import annotations

import logging

import httpx

log = logging.getLogger(__name__)


def message(
    summary: dict[str, object], mlflow_url: str | None = None, report_key: str | None = None
) -> dict[str, str]:
    """The webhook body: ``text`` for Slack, ``content`` for Discord, same words."""
    lines = [f"digitloop run {summary.get('run_id')}: {summary.get('outcome')}"]
    for key in ("drift_score", "live_accuracy", "challenger", "canary", "reasons"):
        if summary.get(key) not in (None, [], ""):
            lines.append(f"- {key.replace('_', ' ')}: {summary[key]}")
    if mlflow_url and summary.get("mlflow_run_id"):
        lines.append(
            f"- MLflow run: {mlflow_url.rstrip('/')}/#/experiments/"
            f"{summary.get('mlflow_experiment_id', '')}/runs/{summary['mlflow_run_id']}"
        )
    if report_key:
        lines.append(f"- report: {report_key}")
    text = "\n".join(lines)
    return {"text": text, "content": text}


def notify(webhook_url: str | None, body: dict[str, str], timeout: float = 10.0) -> bool:
    """POST ``body``; a failing webhook is logged, never fatal to the loop."""
    if not webhook_url:
        return False
    try:
        response = httpx.post(webhook_url, json=body, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("webhook failed: %s", exc)
        return False
    return True
