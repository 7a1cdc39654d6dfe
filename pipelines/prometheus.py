"""Canary health from Prometheus: error rate and p95 latency of one track's /predict.

The ``track`` label is added to every serving pod's series by the chart's scrape
configuration (pod label ``digitloop.dev/track``); without Prometheus the analysis uses
live accuracy alone.
"""

from __future__ import annotations

import logging

import httpx

from pipelines.decisions import ServingHealth

log = logging.getLogger(__name__)
RANGE = "15m"


def _query(url: str, promql: str) -> float | None:
    try:
        answer = httpx.get(f"{url.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=10)
        answer.raise_for_status()
        result = answer.json()["data"]["result"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        log.warning("Prometheus query failed (%s): %s", promql, exc)
        return None
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if value != value else value  # NaN: no traffic in the range


def track_health(url: str, track: str) -> ServingHealth:
    selector = f'route="/predict",track="{track}"'
    errors = _query(
        url,
        f'sum(rate(digitloop_requests_total{{{selector},status=~"5.."}}'
        f"[{RANGE}])) / sum(rate(digitloop_requests_total{{{selector}}}"
        f"[{RANGE}]))",
    )
    p95 = _query(
        url,
        f"histogram_quantile(0.95, sum by (le) (rate("
        f"digitloop_request_duration_seconds_bucket{{{selector}}}[{RANGE}])))",
    )
    return ServingHealth(error_rate=errors, p95_latency_s=p95)
