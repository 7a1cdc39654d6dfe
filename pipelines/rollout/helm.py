"""The Helm release as a rollout target: read from the routing ConfigMap, changed with
``helm upgrade`` of the release's values (``serving.stable.modelVersion``,
``serving.canary.{enabled,modelVersion,weight}``)."""

from __future__ import annotations

import os

from contracts.routing import RoutingState
from pipelines.rollout.base import RolloutError
from pipelines.rollout.helm_cli import Helm, upgrade_serialised
from pipelines.settings import LoopSettings


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
        helm left pending (:mod:`pipelines.rollout.helm_cli`)."""
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
