"""Render the digitloop chart offline through helm-python-sdk (Helm's Go library, no binary).

Helpers shared by the chart tests: render a scenario into Kubernetes objects, find the pod
specs in them, count their resource requests, and validate custom resources against the CRD
schemas vendored in schemas/.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from pipelines.workflows.loop import ReleaseValues

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "digitloop"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
RELEASE = "digitloop"
NAMESPACE = "digitloop"
KUBE_VERSION = "1.36.4"  # the kind node image of kind-config.yaml
SCENARIOS = sorted(path.name.removesuffix("-values.yaml") for path in (CHART / "ci").glob("*.yaml"))

# Custom resources and the CRD schema each is validated against (see schemas/SOURCES.md).
CRD_SCHEMAS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-gateway.networking.k8s.io-v1.json",
    ("argoproj.io/v1alpha1", "CronWorkflow"): "cronworkflow-argoproj.io-v1alpha1.json.gz",
    ("argoproj.io/v1alpha1", "WorkflowTemplate"): "workflowtemplate-argoproj.io-v1alpha1.json.gz",
    ("serving.kserve.io/v1beta1", "InferenceService"): (
        "inferenceservice-serving.kserve.io-v1beta1.json.gz"
    ),
}


def scenario_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()) or {}


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` (install) would give."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values or {})
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def workflow_values(
    values: dict[str, Any] | None = None, release: str = RELEASE, namespace: str = NAMESPACE
) -> ReleaseValues:
    """What a release of the chart puts in the loop's workflows: its values (over the
    chart's defaults) and its objects' names, as the chart's helpers name them."""
    from pipelines.workflows.loop import ReleaseValues

    merged = _merge(yaml.safe_load((CHART / "values.yaml").read_text()), values or {})
    fullname = release if "digitloop" in release else f"{release}-digitloop"
    app = merged["images"]["app"]
    return ReleaseValues(
        namespace=namespace,
        image=f"{app['repository']}:{app['tag']}",
        pull_policy=app["pullPolicy"],
        service_account=f"{fullname}-workflow",
        rollout_service_account=f"{fullname}-rollout",
        config_map=f"{fullname}-config",
        secret=f"{fullname}-secrets",
        schedule=merged["workflow"]["schedule"],
        timezone=merged["workflow"]["timezone"],
    )


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, maps merged key by key as Helm merges values."""
    merged = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merge(base[key], value) if both else value
    return merged


@cache
def render_scenario(name: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    """(template path, object) of every object a scenario renders; cached per session."""
    return tuple(objects(render(scenario_values(name))))


def inference_service(values: dict[str, Any]) -> dict[str, Any]:
    """The InferenceService the chart renders with ``values`` (a kserve backend)."""
    (isvc,) = [o for _, o in objects(render(values)) if o["kind"] == "InferenceService"]
    return isvc


def objects(rendered: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                yield path, document


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], int]]:
    """(label, pod spec, replicas) of every pod an object makes."""
    kind = obj["kind"]
    name = obj["metadata"]["name"]
    spec = obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "ReplicaSet"):
        yield f"{kind}/{name}", spec["template"]["spec"], spec.get("replicas", 1)
    elif kind == "Job":
        yield f"Job/{name}", spec["template"]["spec"], 1
    elif kind == "Pod":
        yield f"Pod/{name}", spec, 1
    elif kind == "InferenceService":
        yield f"InferenceService/{name}", spec["predictor"], spec["predictor"].get("minReplicas", 1)
    elif kind == "WorkflowTemplate":
        for template in spec.get("templates", []):
            if "container" in template:
                pod = {"containers": [template["container"]], **spec}
                pod["securityContext"] = spec.get("securityContext", {})
                yield f"WorkflowTemplate/{name}/{template['name']}", pod, 1


@cache
def crd_schema(filename: str) -> dict[str, Any]:
    path = SCHEMAS / filename
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return json.loads(raw)


def validate_custom(obj: dict[str, Any]) -> None:
    """Validate a custom resource against its CRD's openAPIV3Schema (structural schema)."""
    import jsonschema

    schema = crd_schema(CRD_SCHEMAS[(obj["apiVersion"], obj["kind"])])
    jsonschema.Draft7Validator(_openapi_to_jsonschema(schema)).validate(obj)


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI v3 schema of a CRD -> JSON Schema: int-or-string and nullable become types."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: _openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")
    }
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    # The API server's strict field validation (kubectl's default) refuses unknown fields:
    # so does this, unless the CRD lets a subtree through.
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# -- Quantities and pods -------------------------------------------------------------------

_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": 10**-3,
}  # fmt: skip


def quantity(value: str | float) -> float:
    """A Kubernetes quantity (CPU cores or bytes) as a number."""
    text = str(value)
    for suffix, factor in _SUFFIXES.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def requests(container: dict[str, Any]) -> tuple[float, float]:
    asked = container["resources"]["requests"]
    return quantity(asked["cpu"]), quantity(asked["memory"])


def pod_requests(spec: dict[str, Any]) -> tuple[float, float]:
    """A pod's effective requests, as the scheduler counts them: its containers and sidecars
    (init containers that keep running) together, or its largest init container if more."""
    inits = spec.get("initContainers", [])
    sidecars = [requests(c) for c in inits if c.get("restartPolicy") == "Always"]
    others = [requests(c) for c in inits if c.get("restartPolicy") != "Always"]
    running = [requests(c) for c in spec["containers"]] + sidecars
    return tuple(  # type: ignore[return-value]
        max(
            sum(r[i] for r in running),
            max((o[i] + sum(s[i] for s in sidecars) for o in others), default=0.0),
        )
        for i in (0, 1)
    )


# Pods that run all the time (so they must be probed); jobs, hooks and workflow steps
# run to completion.
SERVER_KINDS = ("Deployment", "InferenceService")


@cache
def footprint(scenario: str) -> tuple[float, float]:
    """Requests of what runs at once: every Deployment's pods, plus the largest of the jobs,
    hooks and workflow steps (they run one at a time; the test pod only on `helm test`)."""
    standing = [0.0, 0.0]
    transient = [(0.0, 0.0)]
    for _, obj in render_scenario(scenario):
        for _label, spec, replicas in pod_specs(obj):
            cpu, mem = pod_requests(spec)
            if obj["kind"] in SERVER_KINDS:
                standing[0] += cpu * replicas
                standing[1] += mem * replicas
            else:
                transient.append((cpu, mem))
    peak = max(transient)
    return standing[0] + peak[0], standing[1] + peak[1]
