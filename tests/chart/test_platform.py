"""The platform `make up` installs, rendered offline: the upstream Traefik, Argo Workflows,
Prometheus and Grafana charts (vendored in platform/, see platform/SOURCES.md) with our values
in charts/platform/.

Our values must be accepted (the chart's schema, and every key we set is one the chart has:
Helm silently ignores a misspelt key), every container must be bounded, the objects the
platform and the digitloop chart refer to in each other must exist, and everything that runs
at once must fit the budget of a laptop's kind cluster: 4 CPU and 8 GiB of requests.
"""

from __future__ import annotations

import configparser
import copy
import hashlib
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from tests.chart.render import (
    KUBE_VERSION,
    ROOT,
    footprint,
    pod_requests,
    render_scenario,
    requests,
)

pytestmark = pytest.mark.chart

VENDORED = Path(__file__).resolve().parent / "platform"
PLATFORM = ROOT / "charts" / "platform"
CLUSTER_MK = ROOT / "mk" / "cluster.mk"
BUDGET_CPU = 4.0
BUDGET_MEMORY = 8 * 2**30
# kind's node: kube-apiserver 250m, controller-manager 200m, scheduler 100m, etcd 100m/100Mi,
# two CoreDNS 100m/70Mi each, kindnet 100m/50Mi (the kubeadm and kind manifests' requests).
KIND_SYSTEM = (0.95, 290 * 2**20)
# The digitloop chart as `make up` deploys it (defaults) and during `make canary`.
DIGITLOOP_SCENARIOS = ("default", "canary-20")


class Release(NamedTuple):
    archive: str
    namespace: str
    pin: str  # the variable of mk/cluster.mk that pins the chart's version


# Release name -> the chart `make platform` installs for it (values: <release>.values.yaml).
RELEASES = {
    "traefik": Release("traefik-41.3.0.tgz", "traefik", "TRAEFIK_CHART_VERSION"),
    "argo-workflows": Release("argo-workflows-1.0.18.tgz", "argo", "ARGO_WORKFLOWS_CHART_VERSION"),
    "prometheus": Release("prometheus-29.27.0.tgz", "monitoring", "PROMETHEUS_CHART_VERSION"),
    "grafana": Release("grafana-12.11.1.tgz", "monitoring", "GRAFANA_CHART_VERSION"),
}

# Maps of entries named by the user: a new entry has the shape of the chart's own example
# entry, and its keys are checked against that one.
NAMED_ENTRIES: dict[str, dict[tuple[str, ...], str]] = {
    # Traefik: every entrypoint (ports.<name>) and Gateway listener is shaped like `web`.
    "traefik": {("ports",): "web", ("gateway", "listeners"): "web"},
}
# Known exceptions: paths under which our keys are not the chart's own, and why.
FREE_FORM: dict[str, dict[tuple[str, ...], str]] = {
    "grafana": {
        ("grafana.ini",): "written verbatim into grafana.ini: its sections are Grafana's "
        "settings, not the chart's (test_grafana_ini_sections_reach_the_rendered_config)",
    },
}
# Where the upstream default is one of these, the chart takes any structure (resources, a
# Service spec, a datasource file, a null object); the chart's schema, if any, checks it.
FREE_FORM_DEFAULTS = ({}, [], None)
# Charts that ship a values.schema.json; Argo Workflows and Grafana ship none, so only the key
# check below guards their values.
WITH_SCHEMA = {"traefik", "prometheus"}


class Platform(NamedTuple):
    metadata: dict[str, Any]
    defaults: dict[str, Any]
    merged: dict[str, Any]
    has_schema: bool
    dependencies: tuple[str, ...]  # subcharts present in the archive
    objects: tuple[dict[str, Any], ...]


def our_values(release: str) -> dict[str, Any]:
    return yaml.safe_load((PLATFORM / f"{release}.values.yaml").read_text()) or {}


@cache
def platform(release: str) -> Platform:
    """Load, schema-check and render one platform chart with our values (install, as `helm
    upgrade --install` does the first time). Render uses Helm's default capabilities, whose
    Kubernetes minor is that of kind's node (test_the_charts_lint_clean_for_the_kind_node)."""
    import helm_python as helm

    meta = RELEASES[release]
    values = our_values(release)
    with helm.Chart.load(str(VENDORED / meta.archive)) as chart:
        # Read before rendering: rendering drops disabled dependencies from the metadata.
        result = Platform(
            metadata=chart.metadata,
            defaults=chart.values,
            merged=chart.merge_values(values),
            has_schema=chart.schema is not None,
            dependencies=tuple(d["name"] for d in chart.dependencies),
            objects=(),
        )
        chart.validate_schema(values)
        rendered = chart.render(values, name=release, namespace=meta.namespace, is_install=True)
    objects = tuple(
        document
        for path, text in sorted(rendered.items())
        if not path.endswith(".txt")
        for document in yaml.safe_load_all(text)
        if document
    )
    return result._replace(objects=objects)


def unknown_keys(
    release: str, ours: dict[str, Any], theirs: dict[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Key paths we set that the chart's defaults do not have (a misspelt key)."""
    for key, value in ours.items():
        here = (*path, key)
        if here in FREE_FORM.get(release, {}):
            continue
        if key in theirs:
            default = theirs[key]
        elif path in NAMED_ENTRIES.get(release, {}):
            default = theirs[NAMED_ENTRIES[release][path]]
        else:
            yield here
            continue
        if not isinstance(value, dict) or default in FREE_FORM_DEFAULTS:
            continue
        if not isinstance(default, dict):
            yield here  # a map where the chart has a scalar
            continue
        yield from unknown_keys(release, value, default, here)


def pinned_versions() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+_CHART_VERSION) \?= (\S+)$", CLUSTER_MK.read_text(), re.M))


def kind_nodes() -> int:
    return len(yaml.safe_load((ROOT / "kind-config.yaml").read_text())["nodes"])


def pod_spec(obj: dict[str, Any]) -> tuple[dict[str, Any], bool] | None:
    """(pod spec, standing) of an object that makes pods: standing ones run all the time,
    the others (jobs, hooks, cron jobs) run to completion."""
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        return spec["template"]["spec"], True
    if obj["kind"] == "Job":
        return spec["template"]["spec"], False
    if obj["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"], False
    if obj["kind"] == "Pod":
        return spec, False
    return None


def copies(obj: dict[str, Any]) -> int:
    if obj["kind"] == "DaemonSet":
        return kind_nodes()
    return obj["spec"].get("replicas", 1)


class Footprint(NamedTuple):
    standing: tuple[float, float]  # requests of what always runs (pods x replicas)
    transient: tuple[float, float]  # the largest job or hook (one at a time)


@cache
def chart_footprint(release: str) -> Footprint:
    standing = [0.0, 0.0]
    transient = (0.0, 0.0)
    for obj in platform(release).objects:
        found = pod_spec(obj)
        if found is None:
            continue
        spec, always = found
        cpu, memory = pod_requests(spec)
        if always:
            standing[0] += cpu * copies(obj)
            standing[1] += memory * copies(obj)
        else:
            transient = max(transient, (cpu, memory))
    return Footprint((standing[0], standing[1]), transient)


def argo_executor() -> tuple[float, float]:
    """Requests of the `wait` sidecar Argo adds to every workflow step pod (the digitloop
    chart's footprint counts a step's own container only), from the rendered controller
    config."""
    (config,) = [
        o
        for o in platform("argo-workflows").objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-controller-configmap")
    ]
    executor = yaml.safe_load(config["data"]["config"])["executor"]
    return requests(executor)


def by_kind(release: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in platform(release).objects if o["kind"] == kind}


# -- The vendored charts are the pinned ones -----------------------------------------------


def test_the_releases_tested_are_the_ones_make_platform_installs() -> None:
    installs = re.findall(
        r"upgrade --install (\S+) (\S+) --repo \S+ \\\s+--version \$\((\w+)\) -n (\S+) "
        r"--create-namespace \\\s+-f charts/platform/(\S+)\.values\.yaml",
        CLUSTER_MK.read_text(),
    )
    assert installs == [
        (release, release, meta.pin, meta.namespace, release) for release, meta in RELEASES.items()
    ]


@pytest.mark.parametrize("release", RELEASES)
def test_the_vendored_chart_is_the_pinned_version(release: str) -> None:
    meta = RELEASES[release]
    chart = platform(release).metadata
    assert chart["name"] == release
    assert chart["version"] == pinned_versions()[meta.pin]
    assert meta.archive == f"{chart['name']}-{chart['version']}.tgz"


def test_the_vendored_archives_match_their_sources() -> None:
    sources = (VENDORED / "SOURCES.md").read_text()
    rows = dict(re.findall(r"^\| `([\w.-]+\.tgz)` \|.*\| ([0-9a-f]{64}) \|$", sources, re.M))
    assert sorted(rows) == sorted(m.archive for m in RELEASES.values())
    assert sorted(p.name for p in VENDORED.glob("*.tgz")) == sorted(rows)
    for archive, digest in rows.items():
        assert hashlib.sha256((VENDORED / archive).read_bytes()).hexdigest() == digest, archive


@pytest.mark.parametrize("release", RELEASES)
def test_every_subchart_not_vendored_is_disabled(release: str) -> None:
    chart = platform(release)
    for dependency in chart.metadata.get("dependencies", []):
        if dependency["name"] in chart.dependencies:
            continue
        node: Any = chart.merged
        for part in dependency["condition"].split("."):
            node = node[part]
        assert node is False, f"{dependency['name']} is enabled: vendor it in its archive"


@pytest.mark.parametrize("release", RELEASES)
def test_the_charts_lint_clean_for_the_kind_node(release: str) -> None:
    import helm_python as helm

    meta = RELEASES[release]
    chart = platform(release)
    constraint = chart.metadata.get("kubeVersion", ">=0.0.0")
    found = re.fullmatch(r"(>=|\^)\s*(\d+)\.(\d+)\.(\d+)(-0)?", constraint.strip())
    assert found, f"unhandled kubeVersion constraint {constraint!r}"
    lowest = tuple(int(n) for n in found.group(2, 3, 4))
    kube = tuple(int(n) for n in KUBE_VERSION.split("."))
    assert lowest <= kube and (found[1] == ">=" or kube[0] == lowest[0]), constraint
    report = helm.lint(
        str(VENDORED / meta.archive),
        our_values(release),
        strict=True,
        namespace=meta.namespace,
        kube_version=f"v{KUBE_VERSION}",
    )
    # The only finding allowed: subcharts left out because our values disable them.
    missing = "chart directory is missing these dependencies: "
    absent = {d["name"] for d in chart.metadata.get("dependencies", [])} - set(chart.dependencies)
    for message in report["messages"]:
        error = message["error"]
        assert error.startswith(missing) and set(error[len(missing) :].split(",")) <= absent, (
            message
        )


# -- Our values are the chart's --------------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_our_values_pass_the_chart_schema_and_render(release: str) -> None:
    chart = platform(release)  # validates against values.schema.json, where there is one
    assert chart.objects
    assert chart.has_schema == (release in WITH_SCHEMA)


@pytest.mark.parametrize("release", RELEASES)
def test_every_key_we_set_is_one_the_chart_has(release: str) -> None:
    chart = platform(release)
    assert list(unknown_keys(release, our_values(release), chart.defaults)) == []


def test_the_known_exceptions_are_still_used() -> None:
    for release, paths in [*FREE_FORM.items(), *NAMED_ENTRIES.items()]:
        for path in paths:
            node: Any = our_values(release)
            for part in path:
                node = node[part]
            assert node, (release, path)


def test_the_key_check_catches_a_misspelt_key() -> None:
    prometheus = copy.deepcopy(our_values("prometheus"))
    prometheus["server"]["retension"] = "3d"
    prometheus["configmapReload"]["prometheus"]["resource"] = {}
    defaults = platform("prometheus").defaults
    assert list(unknown_keys("prometheus", prometheus, defaults)) == [
        ("configmapReload", "prometheus", "resource"),
        ("server", "retension"),
    ]
    traefik = copy.deepcopy(our_values("traefik"))
    traefik["ports"]["api"]["exposedPrt"] = 8081
    traefik["gateway"]["listeners"]["argo"]["protocl"] = "HTTP"
    traefik["deployment"]["replicas"] = {"count": 1}
    assert list(unknown_keys("traefik", traefik, platform("traefik").defaults)) == [
        ("deployment", "replicas"),
        ("gateway", "listeners", "argo", "protocl"),
        ("ports", "api", "exposedPrt"),
    ]


def test_grafana_ini_sections_reach_the_rendered_config() -> None:
    ini = configparser.ConfigParser()
    ini.read_string(by_kind("grafana", "ConfigMap")["grafana"]["data"]["grafana.ini"])
    for section, settings in our_values("grafana")["grafana.ini"].items():
        for key, value in settings.items():
            expected = str(value).lower() if isinstance(value, bool) else str(value)
            assert ini[section][key] == expected, (section, key)


def test_the_settings_we_chose_reach_the_rendered_objects() -> None:
    (traefik,) = by_kind("traefik", "Deployment").values()
    assert traefik["spec"]["replicas"] == 1
    args = traefik["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--providers.kubernetesgateway" in args
    assert not [
        a
        for a in args
        if a.startswith(("--providers.kubernetescrd", "--providers.kubernetesingress"))
    ]
    server = by_kind("argo-workflows", "Deployment")["argo-workflows-server"]
    assert "--auth-mode=server" in server["spec"]["template"]["spec"]["containers"][0]["args"]
    # Argo's release puts nothing in the app's namespace, which it installs before (the
    # digitloop chart's Roles grant the executor's workflowtaskresults rights there).
    assert {o["metadata"].get("namespace", "argo") for o in platform("argo-workflows").objects} == {
        "argo"
    }
    prometheus = by_kind("prometheus", "Deployment")["prometheus-server"]
    (container,) = [
        c
        for c in prometheus["spec"]["template"]["spec"]["containers"]
        if c["name"] == "prometheus-server"
    ]
    assert "--storage.tsdb.retention.time=3d" in container["args"]
    volume = by_kind("prometheus", "PersistentVolumeClaim")["prometheus-server"]["spec"]
    assert volume["resources"]["requests"]["storage"] == "2Gi"
    assert not by_kind("grafana", "PersistentVolumeClaim")


# -- The platform and the digitloop chart refer to objects that exist ----------------------


def _listeners() -> dict[tuple[str, str], set[str]]:
    return {
        (g["metadata"]["namespace"], name): {item["name"] for item in g["spec"]["listeners"]}
        for name, g in by_kind("traefik", "Gateway").items()
    }


def test_every_route_is_attached_to_a_rendered_listener_and_service() -> None:
    listeners = _listeners()
    services = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): {p["port"] for p in o["spec"]["ports"]}
        for release in RELEASES
        for o in platform(release).objects
        if o["kind"] == "Service"
    }
    ours = list(yaml.safe_load_all((PLATFORM / "routes.yaml").read_text()))
    digitloop = [o for _, o in render_scenario("default") if o["kind"] == "HTTPRoute"]
    assert ours and digitloop
    for route in ours + digitloop:
        for parent in route["spec"]["parentRefs"]:
            where = (parent.get("namespace", route["metadata"]["namespace"]), parent["name"])
            assert parent["sectionName"] in listeners[where], route["metadata"]["name"]
    for route in ours:
        for rule in route["spec"]["rules"]:
            for backend in rule["backendRefs"]:
                service = (route["metadata"]["namespace"], backend["name"])
                assert backend["port"] in services[service], route["metadata"]["name"]


def test_the_kind_port_mappings_reach_the_rendered_gateway_ports() -> None:
    kind = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    node_ports = {m["containerPort"] for m in kind["nodes"][0]["extraPortMappings"]}
    (service,) = by_kind("traefik", "Service").values()
    assert service["spec"]["type"] == "NodePort"
    exposed = {p["nodePort"]: p["name"] for p in service["spec"]["ports"]}
    assert set(exposed) == node_ports
    (gateway,) = by_kind("traefik", "Gateway").values()
    listener_ports = {item["name"]: item["port"] for item in gateway["spec"]["listeners"]}
    (traefik,) = by_kind("traefik", "Deployment").values()
    container_ports = {
        p["name"]: p["containerPort"]
        for p in traefik["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    for name in exposed.values():
        assert listener_ports[name] == container_ports[name], name


def test_prometheus_scrapes_the_metrics_argo_emits_for_the_loop() -> None:
    """The loop's drift score and canary decisions are Argo custom metrics: the controller
    must serve metrics (plain HTTP) and Prometheus must scrape its metrics Service."""
    (config,) = by_kind("argo-workflows", "ConfigMap").values()
    metrics = yaml.safe_load(config["data"]["config"])["metricsConfig"]
    assert metrics["enabled"] is True and metrics["secure"] is False
    service = by_kind("argo-workflows", "Service")["argo-workflows-workflow-controller"]
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "metrics"]
    assert port["targetPort"] == metrics["port"]
    scrape = yaml.safe_load(
        by_kind("prometheus", "ConfigMap")["prometheus-server"]["data"]["prometheus.yml"]
    )
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "argo-workflows"]
    namespace = service["metadata"].get("namespace", RELEASES["argo-workflows"].namespace)
    target = f"{service['metadata']['name']}.{namespace}.svc:{port['port']}"
    assert job["static_configs"] == [{"targets": [target]}]


def test_grafana_and_the_loop_query_the_rendered_prometheus_and_dashboards_are_found() -> None:
    service = by_kind("prometheus", "Service")["prometheus-server"]
    url = f"http://prometheus-server.{service['metadata']['namespace']}.svc.cluster.local"
    assert 80 in {p["port"] for p in service["spec"]["ports"]}
    datasources = yaml.safe_load(
        by_kind("grafana", "ConfigMap")["grafana"]["data"]["datasources.yaml"]
    )
    assert [d["url"] for d in datasources["datasources"]] == [url]
    digitloop = yaml.safe_load((ROOT / "charts" / "digitloop" / "values.yaml").read_text())
    assert digitloop["monitoring"]["prometheusUrl"] == url
    scrape = yaml.safe_load(
        by_kind("prometheus", "ConfigMap")["prometheus-server"]["data"]["prometheus.yml"]
    )
    assert "digitloop-serving" in {job["job_name"] for job in scrape["scrape_configs"]}
    # Grafana's $__rate_interval needs the real scrape interval (it assumes 15 s otherwise).
    intervals = {d["jsonData"]["timeInterval"] for d in datasources["datasources"]}
    assert intervals == {scrape["global"]["scrape_interval"]}
    grafana = by_kind("grafana", "Deployment")["grafana"]["spec"]["template"]["spec"]
    (sidecar,) = [c for c in grafana["containers"] if c["name"] == "grafana-sc-dashboard"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["NAMESPACE"] == "ALL"
    dashboards = [
        o
        for _, o in render_scenario("default")
        if o["kind"] == "ConfigMap" and env["LABEL"] in o["metadata"].get("labels", {})
    ]
    assert [d["metadata"]["labels"][env["LABEL"]] for d in dashboards] == [env["LABEL_VALUE"]]


# -- Resources -------------------------------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_every_platform_container_has_requests_and_limits(release: str) -> None:
    pods = 0
    for obj in platform(release).objects:
        spec = obj.get("spec", {})
        found = pod_spec(obj)
        if found is None:
            # Nothing that makes pods may escape the count.
            assert not {"template", "jobTemplate", "containers"} & set(spec), obj["kind"]
            continue
        pods += 1
        pod, _ = found
        for container in pod.get("initContainers", []) + pod["containers"]:
            resources = container.get("resources") or {}
            for part in ("requests", "limits"):
                assert set(resources.get(part) or {}) >= {"cpu", "memory"}, (
                    obj["kind"],
                    obj["metadata"]["name"],
                    container["name"],
                    part,
                )
    assert pods


def test_everything_make_up_runs_fits_4_cpu_and_8_gib(
    record_property: Callable[[str, object], None],
) -> None:
    """Standing requests of the four platform charts + the largest platform job + the digitloop
    chart's peak (its standing pods and largest job or step) + the wait sidecar Argo adds to
    a step + kind's own pods."""
    lines = []
    total = [0.0, 0.0]

    def add(label: str, cpu: float, memory: float) -> None:
        total[0] += cpu
        total[1] += memory
        lines.append(f"{label:<44} {cpu:6.3f} CPU {memory / 2**20:8.0f} MiB")
        record_property(label, {"cpu": round(cpu, 3), "memory_mib": memory / 2**20})

    for release in RELEASES:
        add(f"{release} (standing)", *chart_footprint(release).standing)
    add("platform: largest job or hook", *max(chart_footprint(r).transient for r in RELEASES))

    scenarios = {scenario: footprint(scenario) for scenario in DIGITLOOP_SCENARIOS}
    for scenario, (cpu, memory) in scenarios.items():
        lines.append(f"  digitloop chart, {scenario:<25} {cpu:6.3f} CPU {memory / 2**20:8.0f} MiB")
    worst = max(scenarios, key=scenarios.__getitem__)
    add(f"digitloop chart ({worst}, peak)", *scenarios[worst])
    add("argo executor (wait sidecar of a step)", *argo_executor())
    add("kind node's system pods", *KIND_SYSTEM)
    lines.append(f"{'total':<44} {total[0]:6.3f} CPU {total[1] / 2**30:8.2f} GiB")
    print("\n" + "\n".join(lines))
    record_property("total", {"cpu": round(total[0], 3), "memory_gib": total[1] / 2**30})
    assert total[0] <= BUDGET_CPU, "\n".join(lines)
    assert total[1] <= BUDGET_MEMORY, "\n".join(lines)
    # Each platform chart runs something, so a chart that renders nothing cannot pass.
    assert all(chart_footprint(r).standing[0] > 0 for r in RELEASES)
