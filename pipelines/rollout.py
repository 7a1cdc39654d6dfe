"""Rollout: which versions serve stable and canary, changed through one interface.

On the cluster the truth is the Helm release's values (``serving.stable.modelVersion``,
``serving.canary.{enabled,modelVersion,weight}``), so the pipeline and a person running
``helm upgrade`` never fight; with the KServe backend it is the InferenceService
(:mod:`pipelines.rollout_kserve`); locally it is the embedded service's ``/admin/reload``.
MLflow aliases follow: ``challenger`` is the canary, ``champion`` what stable serves.
"""

from __future__ import annotations

import json
import subprocess
from typing import Protocol

import httpx

from model.errors import DigitloopError
from model.registry import Registry
from model.settings import CHALLENGER_ALIAS, CHAMPION_ALIAS
from pipelines.settings import LoopSettings
from services.state import RoutingState


class RolloutError(DigitloopError, RuntimeError):
    """The serving side refused or could not be reached."""


class Rollout(Protocol):
    def current(self) -> RoutingState: ...
    def apply(self, state: RoutingState) -> None: ...


# -- the three moves, as pure functions of the current state ----------------------------


def with_canary(current: RoutingState, version: str, weight: int) -> RoutingState:
    return RoutingState(current.stable_model, version, weight)


def promoted(current: RoutingState) -> RoutingState:
    """Stable takes the canary's version; the canary is off. Idempotent."""
    if current.canary_model is None:
        return current
    return RoutingState(current.canary_model, None, 0)


def rolled_back(current: RoutingState) -> RoutingState:
    """The canary is off; stable is untouched. Idempotent."""
    return RoutingState(current.stable_model, None, 0)


def sync_aliases(registry: Registry, state: RoutingState) -> None:
    """Point ``champion`` at stable and ``challenger`` at the canary (or remove it)."""
    registry.set_alias(CHAMPION_ALIAS, registry.get(state.stable_model).version)
    if state.canary_model is None:
        registry.delete_alias(CHALLENGER_ALIAS)
    else:
        registry.set_alias(CHALLENGER_ALIAS, registry.get(state.canary_model).version)


# -- backends ----------------------------------------------------------------------------


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


class HelmRollout:
    """The cluster: the release's values, changed with ``helm upgrade --reuse-values``."""

    def __init__(self, settings: LoopSettings) -> None:
        self.settings = settings

    def _helm(self, *args: str) -> str:
        command = [self.settings.helm_binary, *args, "--namespace", self.settings.namespace]
        if self.settings.kubeconfig:
            command += ["--kubeconfig", self.settings.kubeconfig]
        if self.settings.kube_context:
            command += ["--kube-context", self.settings.kube_context]
        # helm's own --timeout bounds the wait; this only catches a helm that hangs.
        timeout = self.settings.rollout_timeout + 120
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, check=False, timeout=timeout
            )
        except FileNotFoundError:
            raise RolloutError(
                f"{self.settings.helm_binary!r} not found: install helm or set "
                "DIGITLOOP_HELM_BINARY (make tools puts a pinned one in ./bin)"
            ) from None
        if result.returncode != 0:
            raise RolloutError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        return result.stdout

    def current(self) -> RoutingState:
        values = json.loads(
            self._helm("get", "values", self.settings.helm_release, "--all", "--output", "json")
        )
        serving = values["serving"]
        canary = serving.get("canary", {})
        enabled = bool(canary.get("enabled")) and canary.get("modelVersion")
        return RoutingState(
            str(serving["stable"]["modelVersion"]),
            str(canary["modelVersion"]) if enabled else None,
            int(canary.get("weight", 0)) if enabled else 0,
        )

    def apply(self, state: RoutingState) -> None:
        self._helm(*helm_upgrade_args(self.settings, state))


def helm_upgrade_args(settings: LoopSettings, state: RoutingState) -> list[str]:
    """The ``helm upgrade`` arguments that set ``state``, the same a person would type."""
    sets = [
        f"serving.stable.modelVersion={state.stable_model}",
        f"serving.canary.enabled={'true' if state.canary_model else 'false'}",
        f"serving.canary.weight={state.canary_weight}",
    ]
    if state.canary_model:
        sets.append(f"serving.canary.modelVersion={state.canary_model}")
    args = [
        "upgrade",
        settings.helm_release,
        settings.helm_chart,
        "--reuse-values",
        "--wait",
        "--timeout",
        f"{settings.rollout_timeout}s",
    ]
    for item in sets:
        args += ["--set-string" if "modelVersion" in item else "--set", item]
    return args


def make_rollout(settings: LoopSettings) -> Rollout:
    if settings.rollout == "helm":
        return HelmRollout(settings)
    if settings.rollout == "kserve":
        from pipelines.rollout_kserve import KServeRollout

        return KServeRollout.connect(
            settings.inference_service,
            settings.namespace,
            kubeconfig=settings.kubeconfig,
            context=settings.kube_context,
            timeout=settings.rollout_timeout,
        )
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    return ServiceRollout(settings.service_url, token)
