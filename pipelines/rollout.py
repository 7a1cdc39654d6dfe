"""Rollout: which versions serve stable and canary, changed through one interface.

On the cluster the truth is the Helm release's values (``serving.stable.modelVersion``,
``serving.canary.{enabled,modelVersion,weight}``), so the pipeline and a person running
``helm upgrade`` never fight. They are read from the routing ConfigMap the chart renders from
those values (``helm get values`` would need Helm's release Secrets, which hold every rendered
Secret) and changed with ``helm upgrade``; with the KServe backend the truth is the InferenceService
(:mod:`pipelines.rollout_kserve`); locally it is the embedded service's ``/admin/reload``.
MLflow aliases follow: ``challenger`` is the canary, ``champion`` what stable serves.
"""

from __future__ import annotations

import os
from typing import Protocol

import httpx

from model.errors import DigitloopError
from model.registry import Registry
from model.settings import CHALLENGER_ALIAS, CHAMPION_ALIAS
from pipelines.helm_cli import Helm, upgrade_serialised
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


def read_routing_config_map(settings: LoopSettings) -> dict[str, str]:
    """The data of the routing ConfigMap: in a pod with the pod's service account (a ``get``
    of that one ConfigMap is all the loop's reading steps may do), elsewhere a kubeconfig."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    name, namespace = settings.routing_config_map, settings.namespace
    try:
        if settings.kubeconfig is None and settings.kube_context is None and in_cluster():
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            api_client = client.ApiClient(configuration)
        else:
            api_client = config.new_client_from_config(
                config_file=settings.kubeconfig, context=settings.kube_context
            )
    except (ConfigException, OSError) as exc:
        raise RolloutError(f"cannot load the Kubernetes configuration: {exc}") from exc
    with api_client:
        try:
            found = client.CoreV1Api(api_client).read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            hint = " (is the digitloop chart installed?)" if exc.status == 404 else ""
            raise RolloutError(
                f"cannot read ConfigMap {namespace}/{name}: {exc.status} {exc.reason}{hint}"
            ) from exc
        except HTTPError as exc:
            raise RolloutError(f"cannot reach the Kubernetes API: {exc}") from exc
    return dict(found.data or {})


def in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ


def routing_from_config_map(data: dict[str, str]) -> RoutingState:
    """The chart's routing ConfigMap (templates/serving-routing-configmap.yaml) as a state."""
    try:
        canary = data.get("canary_model") or None
        return RoutingState(
            data["stable_model"], canary, int(data.get("canary_weight", 0)) if canary else 0
        )
    except (KeyError, ValueError) as exc:
        raise RolloutError(f"the routing ConfigMap is not the chart's: {data!r}") from exc


class HelmRollout:
    """The cluster: the release's values, read from the routing ConfigMap, changed with
    ``helm upgrade``."""

    def __init__(self, settings: LoopSettings) -> None:
        self.settings = settings

    def current(self) -> RoutingState:
        return routing_from_config_map(read_routing_config_map(self.settings))

    def apply(self, state: RoutingState) -> None:
        """Upgrade the release to ``state``, taking turns with any other Helm operation on it
        (a person's `make canary`, the loop's next run) and recovering a release that a killed
        helm left pending (:mod:`pipelines.helm_cli`)."""
        s = self.settings
        helm = Helm(
            binary=s.helm_binary,
            namespace=s.namespace,
            kubeconfig=s.kubeconfig,
            kube_context=s.kube_context,
            # helm's --timeout bounds its wait (--no-hooks: nothing else); this catches a hang.
            timeout=s.rollout_timeout + 120,
        )
        upgrade_serialised(
            helm,
            s.helm_release,
            s.helm_chart,
            helm_upgrade_flags(s, state),
            stuck_after=s.helm_stuck_after,
            max_wait=s.helm_busy_wait,
            rollback_flags=("--wait", "--timeout", f"{s.rollout_timeout}s"),
        )


def helm_upgrade_args(settings: LoopSettings, state: RoutingState) -> list[str]:
    """The ``helm upgrade`` command line that sets ``state``, the same a person would type."""
    return [
        "upgrade",
        settings.helm_release,
        settings.helm_chart,
        *helm_upgrade_flags(settings, state),
    ]


def helm_upgrade_flags(settings: LoopSettings, state: RoutingState) -> list[str]:
    """The flags of that upgrade.

    ``--reset-then-reuse-values``: the chart's own defaults, then every value set on the
    release so far, then these; ``--reuse-values`` would keep the defaults of the chart the
    release was first installed with. ``--no-hooks``: a rollout only moves traffic, the
    install's jobs (buckets, model version 1) are not its business.
    """
    sets = [
        f"serving.stable.modelVersion={state.stable_model}",
        f"serving.canary.enabled={'true' if state.canary_model else 'false'}",
        f"serving.canary.weight={state.canary_weight}",
    ]
    if state.canary_model:
        sets.append(f"serving.canary.modelVersion={state.canary_model}")
    args = [
        "--reset-then-reuse-values",
        "--no-hooks",
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
