"""Rollout on KServe (``serving.backend=kserve``): the InferenceService, through the ``kserve`` SDK.

KServe's canary model is revisions, not a second Deployment: changing the predictor makes a
new revision, ``canaryTrafficPercent`` sends that share to it and the rest to the previous
revision that took all the traffic. So the digitloop chart writes the track into the predictor
(``DIGITLOOP_ONLY_TRACK``, ``DIGITLOOP_STABLE_MODEL``, ``DIGITLOOP_CANARY_MODEL``, the
``digitloop.dev/track`` label) and these functions read and write the same fields: the
InferenceService itself says which versions serve, as the Helm values do for the gateway
backend. ``tests/chart`` checks that a patch from here, applied to the chart's stable render,
gives the chart's canary render.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol

from urllib3.exceptions import HTTPError

from contracts.routing import RoutingState
from pipelines.rollout.base import RolloutError
from services.settings import ServingSettings

PREDICTOR_CONTAINER = "kserve-container"
TRACK_LABEL = "digitloop.dev/track"
# The variables serving reads its track and versions from: ServingSettings' fields.
ONLY_TRACK = ServingSettings.env_name("only_track")
STABLE_MODEL = ServingSettings.env_name("stable_model")
CANARY_MODEL = ServingSettings.env_name("canary_model")
# KServe's own reading of a missing canaryTrafficPercent: the newest revision takes it all.
ALL_TRAFFIC = 100
# The SDK wraps an API server's refusal in a RuntimeError; an unreachable one is urllib3's.
API_ERRORS = (RuntimeError, HTTPError)


@dataclass(frozen=True)
class PredictorChange:
    """One merge patch of ``spec.predictor``: the traffic share, the track label, the container."""

    canary_traffic_percent: int
    track: str | None = None
    container: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        """The merge-patch body, as the API server receives it."""
        predictor: dict[str, Any] = {"canaryTrafficPercent": self.canary_traffic_percent}
        if self.track is not None:
            predictor["labels"] = {TRACK_LABEL: self.track}
        if self.container is not None:
            # A merge patch replaces a list whole: the container goes with all its fields.
            predictor["containers"] = [self.container]
        return {"spec": {"predictor": predictor}}


def predictor_container(isvc: dict[str, Any]) -> dict[str, Any]:
    containers = isvc.get("spec", {}).get("predictor", {}).get("containers") or []
    for container in containers:
        if container.get("name") == PREDICTOR_CONTAINER:
            return container
    name = isvc.get("metadata", {}).get("name", "?")
    raise RolloutError(f"InferenceService {name} has no {PREDICTOR_CONTAINER!r} container")


def env_value(container: dict[str, Any], name: str) -> str | None:
    for item in container.get("env") or []:
        if item.get("name") == name:
            return item.get("value")
    return None


def routing_state(isvc: dict[str, Any]) -> RoutingState:
    """Which versions serve, as the InferenceService's newest revision says."""
    container = predictor_container(isvc)
    stable = env_value(container, STABLE_MODEL)
    if stable is None:
        name = isvc["metadata"]["name"]
        raise RolloutError(
            f"InferenceService {name} has no {STABLE_MODEL}: it was not made by the digitloop chart"
        )
    if env_value(container, ONLY_TRACK) != "canary":
        return RoutingState(stable)
    percent = isvc["spec"]["predictor"].get("canaryTrafficPercent", ALL_TRAFFIC)
    return RoutingState(stable, env_value(container, CANARY_MODEL), int(percent))


def with_track_env(container: dict[str, Any], state: RoutingState) -> dict[str, Any]:
    """The container serving ``state``'s newest track, every other field kept as it is."""
    track = "canary" if state.canary_model else "stable"
    wanted = {ONLY_TRACK: track, STABLE_MODEL: state.stable_model}
    if state.canary_model:
        wanted[CANARY_MODEL] = state.canary_model
    env: list[dict[str, Any]] = []
    for item in container.get("env") or []:
        name = item.get("name")
        if name == CANARY_MODEL:
            continue  # re-added below, right after the stable model as the chart has it
        env.append({"name": name, "value": wanted.pop(name)} if name in wanted else item)
        if name == STABLE_MODEL and CANARY_MODEL in wanted:
            env.append({"name": CANARY_MODEL, "value": wanted.pop(CANARY_MODEL)})
    env += [{"name": name, "value": value} for name, value in wanted.items()]
    changed = copy.deepcopy(container)
    changed["env"] = env
    return changed


def predictor_changes(isvc: dict[str, Any], state: RoutingState) -> list[PredictorChange]:
    """The patches that take the InferenceService from what it serves to ``state``, in order.

    - a new canary or promotion: one patch; KServe starts the new revision and only then
      moves the traffic.
    - a rollback: first all traffic back to the previous revision (instant, that revision is
      still running), then a stable revision of the old version replaces the canary's.
    - a changed weight only: just ``canaryTrafficPercent``, no new revision.
    """
    current = routing_state(isvc)
    if state == current:
        return []
    container = predictor_container(isvc)
    track = "canary" if state.canary_model else "stable"
    if state.canary_model is not None and (state.stable_model, state.canary_model) == (
        current.stable_model,
        current.canary_model,
    ):
        return [PredictorChange(state.canary_weight)]
    changes = []
    rolling_back = (
        current.canary_model is not None
        and state.canary_model is None
        and state.stable_model != current.canary_model
    )
    if rolling_back:
        changes.append(PredictorChange(0))
    percent = state.canary_weight if state.canary_model else ALL_TRAFFIC
    changes.append(PredictorChange(percent, track, with_track_env(container, state)))
    return changes


class KServeApi(Protocol):
    """The part of ``kserve.KServeClient`` the driver uses."""

    def get(self, name: str, namespace: str) -> dict[str, Any]: ...
    def patch(self, name: str, inferenceservice: Any, namespace: str) -> dict[str, Any]: ...
    def wait_isvc_ready(
        self,
        name: str,
        namespace: str,
        timeout_seconds: int,
        polling_interval: float,
        expected_generation: int | None,
    ) -> None: ...


class KServeRollout:
    """The cluster with ``serving.backend=kserve``: one InferenceService, patched in place."""

    def __init__(
        self,
        name: str,
        namespace: str,
        client: KServeApi,
        timeout: int = 600,
        polling_interval: float = 2.0,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.client = client
        self.timeout = timeout
        self.polling_interval = polling_interval

    @classmethod
    def connect(
        cls,
        name: str,
        namespace: str,
        kubeconfig: str | None = None,
        context: str | None = None,
        timeout: int = 600,
    ) -> KServeRollout:
        """In a pod, the pod's service account; elsewhere a kubeconfig (``context`` in it).

        The kubernetes client reads ``$KUBECONFIG`` once, when it is imported, so a file
        given here is passed on explicitly.
        """
        from kserve import KServeClient

        try:
            client = KServeClient(config_file=kubeconfig, context=context)
        except Exception as exc:  # kubernetes' ConfigException, or a missing/broken file
            raise RolloutError(f"cannot load the Kubernetes configuration: {exc}") from exc
        return cls(name, namespace, client, timeout)

    def _isvc(self) -> dict[str, Any]:
        try:
            return self.client.get(self.name, namespace=self.namespace)
        except API_ERRORS as exc:
            raise RolloutError(
                f"cannot read InferenceService {self.namespace}/{self.name}: {exc}"
            ) from exc

    def current(self) -> RoutingState:
        return routing_state(self._isvc())

    def apply(self, state: RoutingState) -> None:
        for change in predictor_changes(self._isvc(), state):
            try:
                patched = self.client.patch(
                    self.name, as_inference_service(change, self.name), namespace=self.namespace
                )
                self.client.wait_isvc_ready(
                    self.name,
                    namespace=self.namespace,
                    timeout_seconds=self.timeout,
                    polling_interval=self.polling_interval,
                    expected_generation=patched["metadata"].get("generation"),
                )
            except API_ERRORS as exc:
                raise RolloutError(
                    f"InferenceService {self.namespace}/{self.name} did not take "
                    f"{change.body()['spec']['predictor']}: {exc}"
                ) from exc


def as_inference_service(change: PredictorChange, name: str) -> Any:
    """The SDK's typed object for ``change`` (``KServeClient.patch`` takes no plain dict)."""
    from kserve import (
        V1beta1InferenceService,
        V1beta1InferenceServiceSpec,
        V1beta1PredictorSpec,
        constants,
    )
    from kubernetes.client import V1ObjectMeta

    body = change.body()["spec"]["predictor"]
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(name=name),
        spec=V1beta1InferenceServiceSpec(
            predictor=V1beta1PredictorSpec(
                canary_traffic_percent=body["canaryTrafficPercent"],
                labels=body.get("labels"),
                containers=body.get("containers"),
            )
        ),
    )
