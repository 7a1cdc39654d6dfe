"""The embedded service as a rollout target: ``GET /model`` and ``POST /admin/reload``."""

from __future__ import annotations

import httpx

from contracts.routing import RoutingState
from pipelines.rollout.base import RolloutError


class ServiceRollout:
    """The embedded service: ``GET /model`` and ``POST /admin/reload``."""

    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def current(self) -> RoutingState:
        try:
            answer = httpx.get(f"{self.url}/model", timeout=self.timeout)
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            raise RolloutError(f"cannot read the service's models at {self.url}: {exc}") from exc
        tracks = answer.json()["tracks"]
        canary = tracks.get("canary")
        return RoutingState(
            tracks["stable"]["model_version"],
            canary["model_version"] if canary else None,
            answer.json()["canary_weight"] if canary else 0,
        )

    def apply(self, state: RoutingState) -> None:
        body = {
            "stable_model": state.stable_model,
            "canary_model": state.canary_model or "",
            "canary_weight": state.canary_weight,
        }
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            answer = httpx.post(
                f"{self.url}/admin/reload", json=body, headers=headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise RolloutError(f"cannot reach {self.url}/admin/reload: {exc}") from exc
        if answer.status_code != 200:
            raise RolloutError(f"/admin/reload answered {answer.status_code}: {answer.text}")
