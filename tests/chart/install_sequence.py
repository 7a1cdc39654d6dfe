"""Replay what `make up` runs, in order, against the objects each command would create.

No cluster runs here, so this is how the static tier sees install order and re-runs. The
commands are the ones make really runs (`make -n up`, sub-makes included); each Helm release
is rendered from the chart it installs (the vendored platform charts, our chart) with the
values the command gives it; a small model of the cluster keeps the namespaces, the kinds
the API serves, the images on the node and each release's values. It checks that

- every namespaced object's namespace exists by the time it is applied, or is created then;
- every custom resource comes after its CRD (Helm maps every object of a release before it
  applies any, so a CRD rendered as a template serves only later commands; crds/ comes first);
- every hook that runs on install also runs on upgrade: `helm upgrade --install` upgrades a
  release whose first install failed, so an install-only hook would never run again;
- our images are on the node, with the tags the release asks for;
- and, replayed after the loop's own rollout, that nothing the rollout set is reset.

The Helm behaviour modelled here is read from Helm's source, v4.2.4 and main, from which
the pinned v4.3.0 is cut (the tag is not in the mirror read; tests/fixtures/helm/SOURCES.md):
`upgrade --install` installs only when the release has no revision (or was uninstalled),
else upgrades, whatever the last status (pkg/cmd/upgrade.go); crds/ is applied on install
only; hooks run by event, by weight then name (pkg/action/hooks.go), unless --no-hooks;
values are combined by pkg/action/upgrade.go's reuseValues (see :func:`upgrade_config`).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.chart.render import CHART, ROOT

VENDORED = ROOT / "tests" / "chart" / "platform"

# What a new kind cluster has (kind v0.33.0: the standard namespaces and local-path-storage).
KIND_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease", "local-path-storage"}
# API groups every Kubernetes 1.36 API server serves; any other group needs its CRD first.
BUILT_IN_GROUPS = {
    "",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "rbac.authorization.k8s.io",
    "networking.k8s.io",
    "apiextensions.k8s.io",
    "admissionregistration.k8s.io",
    "apiregistration.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
}
# Kinds that live outside namespaces.
CLUSTER_KINDS = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "GatewayClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
    "PersistentVolume",
}
# config/crd/kustomization.yaml of kubernetes-sigs/gateway-api at the commit mk/cluster.mk
# pins (tag v1.5.1): the standard channel's CRDs (and a ValidatingAdmissionPolicy).
GATEWAY_API_KINDS = {
    ("gateway.networking.k8s.io", kind)
    for kind in (
        "GatewayClass",
        "Gateway",
        "GRPCRoute",
        "HTTPRoute",
        "ReferenceGrant",
        "BackendTLSPolicy",
        "ListenerSet",
        "TLSRoute",
    )
}
# Platform releases by chart name: their vendored archive (tests/chart/platform/SOURCES.md).
PLATFORM_ARCHIVES = {
    "traefik": "traefik-41.3.0.tgz",
    "argo-workflows": "argo-workflows-1.0.18.tgz",
    "prometheus": "prometheus-29.27.0.tgz",
    "grafana": "grafana-12.11.1.tgz",
}
OUR_IMAGES = ("digitloop-serving", "digitloop-app")


@dataclass
class Release:
    chart: str
    namespace: str
    config: dict[str, Any]  # the values given to the release so far (Helm's release.Config)


@dataclass
class Cluster:
    namespaces: set[str] = field(default_factory=set)
    kinds: set[tuple[str, str]] = field(default_factory=set)  # (group, kind) of the CRDs
    images: set[str] = field(default_factory=set)
    releases: dict[str, Release] = field(default_factory=dict)
    hooks_run: list[str] = field(default_factory=list)  # "<release>: Kind/name"
    problems: list[str] = field(default_factory=list)
    exists: bool = False


# -- the commands ---------------------------------------------------------------------------


def make_commands(*args: str) -> list[list[str]]:
    """The commands ``make -n ARGS`` prints, one argv each, continuation lines joined."""
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return list(commands(out))


def commands(text: str) -> Iterator[list[str]]:
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "make ", "echo ", "test -n ")):
            continue
        # The `cluster` target's re-run guard: the branch that creates the cluster is what
        # a first run executes (a re-run keeps the existing cluster, which is the same).
        if line.startswith("if ") and " create cluster " in line:
            line = line.split(" else ", 1)[1].split(";", 1)[0]
        yield shlex.split(line)


def tool(argv: list[str]) -> str:
    """kind, kubectl, helm, argo (bin/<tool>-<version>) or a script path."""
    name = Path(argv[0]).name
    return re.sub(r"-v\d.*$", "", name) if argv[0].startswith(("/", "bin/")) else argv[0]


# -- Helm's values, as pkg/action/upgrade.go combines them -----------------------------------


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, tables merged key by key (chartutil.CoalesceTables's effect)."""
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_value(values: dict[str, Any], assignment: str, as_string: bool) -> None:
    """One ``--set``/``--set-string`` (dotted keys; true/false and integers typed as strvals)."""
    path, _, raw = assignment.partition("=")
    value: Any = raw
    if not as_string:
        if raw in ("true", "false"):
            value = raw == "true"
        elif re.fullmatch(r"-?\d+", raw):
            value = int(raw)
    *parents, leaf = path.split(".")
    for key in parents:
        values = values.setdefault(key, {})
    values[leaf] = value


def upgrade_config(flags: set[str], previous: dict[str, Any], given: dict[str, Any]) -> dict:
    """The release config after an upgrade (Helm 4 pkg/action/upgrade.go, reuseValues):
    --reset-values: only what is given; --reuse-values and --reset-then-reuse-values: what is
    given over the previous config (the first also keeps the old chart's defaults); none of
    them: what is given, or the previous config when nothing is given."""
    if "--reset-values" in flags:
        return given
    if flags & {"--reuse-values", "--reset-then-reuse-values"}:
        return deep_merge(previous, given)
    return given if given else previous


# -- replay ---------------------------------------------------------------------------------


def replay(steps: Iterable[list[str]], cluster: Cluster | None = None) -> Cluster:
    """Run ``steps`` against ``cluster`` (a new, absent one by default); problems collect."""
    cluster = cluster or Cluster()
    for argv in steps:
        name = tool(argv)
        if name == "kind" and "create" in argv and "cluster" in argv:
            cluster.exists = True
            cluster.namespaces |= KIND_NAMESPACES
        elif name == "kubectl":
            kubectl(cluster, argv)
        elif name == "helm":
            helm(cluster, argv)
        elif name == "scripts/kind-load.sh" or (name == "kind" and "load" in argv):
            cluster.images |= {a for a in argv if a.startswith(OUR_IMAGES)}
    return cluster


def option(argv: list[str], *names: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in names]


def kubectl(cluster: Cluster, argv: list[str]) -> None:
    if "apply" not in argv:
        return
    if not cluster.exists:
        cluster.problems.append(f"kubectl apply before the cluster exists: {shlex.join(argv)}")
        return
    for source in option(argv, "-k"):
        if "kubernetes-sigs/gateway-api/config/crd" in source:
            cluster.kinds |= GATEWAY_API_KINDS
        else:
            cluster.problems.append(f"no model of kustomization {source}")
    for path in option(argv, "-f"):
        objects = [o for o in yaml.safe_load_all((ROOT / path).read_text()) if o]
        apply(cluster, f"kubectl apply -f {path}", objects, "default")


def helm(cluster: Cluster, argv: list[str]) -> None:
    if "upgrade" not in argv:
        return
    if not cluster.exists:
        cluster.problems.append(f"helm before the cluster exists: {shlex.join(argv)}")
        return
    start = argv.index("upgrade") + 1
    # Helm's flags that take a value, so their values are not taken for the release or chart.
    valued = {
        "--repo",
        "--version",
        "-n",
        "--namespace",
        "-f",
        "--values",
        "--set",
        "--set-string",
        "--timeout",
        "--kube-context",
        "--kubeconfig",
    }
    positional = [
        a
        for i, a in enumerate(argv[start:], start)
        if not a.startswith("-") and argv[i - 1] not in valued
    ]
    name, chart = positional[:2]
    namespace = (option(argv, "-n", "--namespace") or ["default"])[-1]
    flags = {a for a in argv if a.startswith("--") and "=" not in a}

    given: dict[str, Any] = {}
    for path in option(argv, "-f", "--values"):
        given = deep_merge(given, yaml.safe_load((ROOT / path).read_text()) or {})
    for flag, as_string in (("--set", False), ("--set-string", True)):
        for assignment in option(argv, flag):
            set_value(given, assignment, as_string)

    existing = cluster.releases.get(name)
    # Installed only when there is no revision: a failed one is upgraded, like a deployed one.
    installing = existing is None and "--install" in flags
    if existing is None and not installing:
        cluster.problems.append(f"helm upgrade of {name}, which is not installed")
        return
    if "--create-namespace" in flags and installing:
        cluster.namespaces.add(namespace)
    config = given if installing else upgrade_config(flags, existing.config, given)
    label = f"helm {'install' if installing else 'upgrade'} {name}"

    crds, objects = render(chart, name, namespace, config, installing)
    if installing:  # crds/ is applied on install only, before anything else of the release
        for crd in crds:
            cluster.kinds.add((crd["spec"]["group"], crd["spec"]["names"]["kind"]))
    hooks = [o for o in objects if "helm.sh/hook" in (o["metadata"].get("annotations") or {})]
    plain = [o for o in objects if o not in hooks]
    apply(cluster, label, plain, namespace)
    cluster.releases[name] = Release(chart, namespace, config)
    event = "install" if installing else "upgrade"
    if "--no-hooks" not in flags:
        # Helm runs the hooks of an event by weight, then name (pkg/action/hooks.go).
        for hook in sorted(hooks, key=hook_order):
            events = hook["metadata"]["annotations"]["helm.sh/hook"].split(",")
            if any(e.strip().endswith(f"-{event}") for e in events):
                apply(cluster, f"{label} (hook)", [hook], namespace)
                cluster.hooks_run.append(f"{name}: {hook['kind']}/{hook['metadata']['name']}")
    for hook in hooks:
        events = {e.strip() for e in hook["metadata"]["annotations"]["helm.sh/hook"].split(",")}
        for when in ("pre", "post"):
            if f"{when}-install" in events and f"{when}-upgrade" not in events:
                cluster.problems.append(
                    f"{label}: hook {hook['kind']}/{hook['metadata']['name']} runs on "
                    f"{when}-install only: after a failed first install, `upgrade --install` "
                    "upgrades and it never runs again"
                )


def hook_order(hook: dict[str, Any]) -> tuple[int, str]:
    annotations = hook["metadata"]["annotations"]
    return int(annotations.get("helm.sh/hook-weight", "0")), hook["metadata"]["name"]


def render(
    chart: str, name: str, namespace: str, config: dict[str, Any], installing: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(crds/ objects, rendered objects) of ``chart`` for a release (copies: callers may
    change them)."""
    found = _render(chart, name, namespace, json.dumps(config, sort_keys=True), installing)
    return copy.deepcopy(found)


@cache
def _render(
    chart: str, name: str, namespace: str, config: str, installing: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import helm_python as helm

    source = CHART if chart == "charts/digitloop" else VENDORED / PLATFORM_ARCHIVES[chart]
    with helm.Chart.load(str(source)) as loaded:
        crds = [d for c in loaded.crds for d in yaml.safe_load_all(c["data"]) if d]
        rendered = loaded.render(
            json.loads(config),
            name=name,
            namespace=namespace,
            is_install=installing,
            is_upgrade=not installing,
        )
    objects = [
        d
        for path, text in sorted(rendered.items())
        if not path.endswith(".txt")
        for d in yaml.safe_load_all(text)
        if d
    ]
    return crds, objects


def group_of(obj: dict[str, Any]) -> str:
    version = obj["apiVersion"]
    return version.split("/")[0] if "/" in version else ""


def apply(cluster: Cluster, label: str, objects: list[dict[str, Any]], namespace: str) -> None:
    """Apply ``objects`` as one command does: Namespaces first, every kind mapped up front."""
    namespaces = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        group = group_of(obj)
        if group not in BUILT_IN_GROUPS and (group, kind) not in cluster.kinds:
            cluster.problems.append(f"{label}: {kind}/{name} before its CRD ({group})")
        if kind not in CLUSTER_KINDS:
            where = obj["metadata"].get("namespace", namespace)
            if where not in cluster.namespaces | namespaces:
                cluster.problems.append(
                    f"{label}: {kind}/{name} in namespace {where}, which does not exist yet"
                )
        for image in pod_images(obj):
            if image.startswith(OUR_IMAGES) and image not in cluster.images:
                cluster.problems.append(f"{label}: {kind}/{name} runs {image}, not on the node")
    for obj in objects:
        if obj["kind"] == "CustomResourceDefinition":
            cluster.kinds.add((obj["spec"]["group"], obj["spec"]["names"]["kind"]))
    cluster.namespaces |= namespaces


def pod_images(obj: Any) -> Iterator[str]:
    """Every ``image`` in an object (pod templates, Argo templates, KServe predictors)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from pod_images(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from pod_images(item)
