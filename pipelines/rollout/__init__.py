"""Rollout: which versions serve stable and canary, changed through one interface.

On the cluster the truth is the Helm release's values (``serving.stable.modelVersion``,
``serving.canary.{enabled,modelVersion,weight}``), so the pipeline and a person running
``helm upgrade`` never fight. They are read from the routing ConfigMap the chart renders from
those values (``helm get values`` would need Helm's release Secrets, which hold every rendered
Secret) and changed with ``helm upgrade``; with the KServe backend the truth is the InferenceService
(:mod:`pipelines.rollout.kserve`); locally it is the embedded service's ``/admin/reload``.
MLflow aliases follow: ``challenger`` is the canary, ``champion`` what stable serves.
"""

from __future__ import annotations

from pipelines.rollout.base import (
    Rollout,
    RolloutError,
    promoted,
    rolled_back,
    sync_aliases,
    with_canary,
)
from pipelines.settings import LoopSettings

__all__ = [
    "Rollout",
    "RolloutError",
    "make_rollout",
    "promoted",
    "rolled_back",
    "sync_aliases",
    "with_canary",
]


def make_rollout(settings: LoopSettings) -> Rollout:
    """The driver ``settings.rollout`` names; each backend's client is imported only when used."""
    if settings.rollout == "helm":
        from pipelines.rollout.helm import HelmRollout

        return HelmRollout(settings)
    if settings.rollout == "kserve":
        from pipelines.rollout.kserve import KServeRollout

        return KServeRollout.connect(
            settings.inference_service,
            settings.namespace,
            kubeconfig=settings.kubeconfig,
            context=settings.kube_context,
            timeout=settings.rollout_timeout,
        )
    from pipelines.rollout.service import ServiceRollout

    return ServiceRollout(settings.service_url, settings.admin_secret())
