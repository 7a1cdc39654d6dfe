"""The embedded service as a rollout target, through the service's client: what serves is
what ``/model`` says, and ``/admin/reload`` (with the admin token) changes it."""

from __future__ import annotations

from contracts.routing import RoutingState
from pipelines.rollout.base import RolloutError
from services.client import DigitloopClient, ServiceError, ServiceUnavailable

# Seconds for an answer: a reload loads the models it names before it answers.
RELOAD_TIMEOUT_S = 60.0


class ServiceRollout:
    """The embedded service: ``GET /model`` and ``POST /admin/reload``."""

    def __init__(self, url: str, token: str | None, timeout: float = RELOAD_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def current(self) -> RoutingState:
        with self._client() as client:
            try:
                info = client.model_info()
            except ServiceError as exc:
                raise RolloutError(
                    f"cannot read the service's models at {self.url}: {exc.message}"
                ) from exc
        stable, canary = info.tracks.get("stable"), info.tracks.get("canary")
        if stable is None:
            raise RolloutError(f"the service at {self.url} serves no stable track")
        return RoutingState(
            stable.model_version,
            canary.model_version if canary else None,
            info.canary_weight if canary else 0,
        )

    def apply(self, state: RoutingState) -> None:
        with self._client() as client:
            try:
                client.reload(
                    stable_model=state.stable_model,
                    canary_model=state.canary_model or "",
                    canary_weight=state.canary_weight,
                )
            except ServiceUnavailable as exc:
                raise RolloutError(f"cannot reach {self.url}/admin/reload: {exc.message}") from exc
            except ServiceError as exc:
                raise RolloutError(f"/admin/reload answered {exc.status}: {exc.message}") from exc

    def _client(self) -> DigitloopClient:
        return DigitloopClient(self.url, token=self.token, timeout=self.timeout)
