"""Invariants over everything the chart renders: security, resources, probes, secrets, images,
the traffic split, the generated workflow, and the footprint."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from contracts.routing import RoutingState
from tests.chart.render import (
    CHART,
    NAMESPACE,
    ROOT,
    SCENARIOS,
    SERVER_KINDS,
    footprint,
    objects,
    pod_specs,
    render,
    render_scenario,
    scenario_values,
    workflow_values,
)

pytestmark = pytest.mark.chart

SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY|WEBHOOK)", re.I)
PINNED = re.compile(r"^[\w./-]+(:[\w.-]+)(@sha256:[0-9a-f]{64})?$|^[\w./-]+@sha256:[0-9a-f]{64}$")


def all_pods(scenario: str) -> list[tuple[str, str, dict[str, Any], int]]:
    return [
        (path, label, spec, replicas)
        for path, obj in render_scenario(scenario)
        for label, spec, replicas in pod_specs(obj)
    ]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("initContainers", []) + spec["containers"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_container_is_locked_down(scenario: str) -> None:
    for _, label, spec, _ in all_pods(scenario):
        pod = spec.get("securityContext", {})
        for container in containers(spec):
            context = container.get("securityContext", {})
            where = f"{label}/{container.get('name', 'main')}"
            # set on the pod or on the container (KServe's predictor: Knative takes no pod one)
            assert context.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            seccomp = context.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert context.get("runAsUser", pod.get("runAsUser", 0)) != 0, where


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_container_has_requests_and_limits(scenario: str) -> None:
    for _, label, spec, _ in all_pods(scenario):
        for container in containers(spec):
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                assert set(resources.get(part, {})) >= {"cpu", "memory"}, (label, part)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_servers_are_probed(scenario: str) -> None:
    for _, obj in render_scenario(scenario):
        if obj["kind"] not in SERVER_KINDS:
            continue
        for label, spec, _ in pod_specs(obj):
            for container in spec["containers"]:
                assert "readinessProbe" in container, (label, container["name"])
                assert "livenessProbe" in container, (label, container["name"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_serving_probes_and_environment(scenario: str) -> None:
    serving = [(label, spec) for _, label, spec, _ in all_pods(scenario) if "serving" in label]
    assert serving
    for label, spec in serving:
        container = spec["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", label
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez", label
        env = {item["name"]: item for item in container["env"]}
        assert env["DIGITLOOP_ONLY_TRACK"]["value"] in ("stable", "canary")
        assert env["OMP_NUM_THREADS"]["value"] == "1"
        if not label.startswith("InferenceService/"):  # Knative: the host name is the pod's
            assert env["DIGITLOOP_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == (
                "metadata.name"
            )
        for name in (
            "DIGITLOOP_ADMIN_TOKEN",
            "DIGITLOOP_PREDICTION_ID_SECRET",
            "DIGITLOOP_S3_ACCESS_KEY",
            "DIGITLOOP_S3_SECRET_KEY",
        ):
            assert "secretKeyRef" in env[name]["valueFrom"], (label, name)
        for name in (
            "DIGITLOOP_MLFLOW_TRACKING_URI",
            "DIGITLOOP_S3_ENDPOINT",
            "DIGITLOOP_S3_BUCKET",
            "DIGITLOOP_WORKERS",
            "DIGITLOOP_DATA_DIR",
            "DIGITLOOP_STABLE_MODEL",
        ):
            assert name in env, (label, name)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/tmp", env["DIGITLOOP_DATA_DIR"]["value"]} <= mounts


def test_the_pod_name_env_is_the_one_store_settings_reads() -> None:
    from services.store.backends import StoreSettings

    prefix = StoreSettings.model_config["env_prefix"]
    assert "pod_name" in StoreSettings.model_fields
    assert f"{prefix}POD_NAME" == "DIGITLOOP_POD_NAME"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_secret_in_plain_env(scenario: str) -> None:
    for _, label, spec, _ in all_pods(scenario):
        for container in containers(spec):
            for item in container.get("env", []):
                if SECRET_NAME.search(item["name"]):
                    assert "value" not in item, (label, item["name"])
    for path, obj in render_scenario(scenario):
        if obj["kind"] == "ConfigMap":
            for key in obj.get("data", {}):
                assert not SECRET_NAME.search(key), (path, key)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_images_are_pinned(scenario: str) -> None:
    for _, label, spec, _ in all_pods(scenario):
        for container in containers(spec):
            image = container["image"]
            assert PINNED.match(image), (label, image)
            assert not image.endswith(":latest"), (label, image)


def _route(scenario: str) -> dict[str, Any] | None:
    for _, obj in render_scenario(scenario):
        if obj["kind"] == "HTTPRoute" and obj["metadata"]["name"].endswith("-serving"):
            return obj
    return None


@pytest.mark.parametrize("scenario", ["default", "canary-0", "canary-20", "canary-100"])
def test_the_split_weights_sum_to_100(scenario: str) -> None:
    route = _route(scenario)
    assert route is not None
    default_rule = route["spec"]["rules"][-1]
    weights = {ref["name"]: ref["weight"] for ref in default_rule["backendRefs"]}
    assert sum(weights.values()) == 100
    canary = (
        (yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text()) or {})
        .get("serving", {})
        .get("canary", {})
    )
    if canary.get("enabled"):
        assert weights["digitloop-serving-canary"] == canary["weight"]
        assert weights["digitloop-serving-stable"] == 100 - canary["weight"]
    else:
        assert list(weights) == ["digitloop-serving-stable"]


@pytest.mark.parametrize("scenario", ["default", "canary-20"])
def test_the_header_pins_a_request_to_a_track(scenario: str) -> None:
    route = _route(scenario)
    pins = {}
    for rule in route["spec"]["rules"]:
        for match in rule.get("matches", []):
            for header in match.get("headers", []):
                assert header["name"] == "X-Digitloop-Track"
                pins[header["value"]] = [ref["name"] for ref in rule["backendRefs"]]
    assert pins["stable"] == ["digitloop-serving-stable"]
    if scenario == "canary-20":
        assert pins["canary"] == ["digitloop-serving-canary"]
    else:
        assert "canary" not in pins  # no canary to pin to


def test_the_canary_runs_its_version_on_the_same_image() -> None:
    deployments = {
        o["metadata"]["name"]: o
        for _, o in render_scenario("canary-20")
        if o["kind"] == "Deployment"
    }
    stable = deployments["digitloop-serving-stable"]["spec"]["template"]
    canary = deployments["digitloop-serving-canary"]["spec"]["template"]
    assert stable["spec"]["containers"][0]["image"] == canary["spec"]["containers"][0]["image"]
    assert stable["metadata"]["labels"]["digitloop.dev/track"] == "stable"
    assert canary["metadata"]["labels"]["digitloop.dev/track"] == "canary"
    env = {e["name"]: e.get("value") for e in canary["spec"]["containers"][0]["env"]}
    assert env["DIGITLOOP_CANARY_MODEL"] == "4"
    assert env["DIGITLOOP_STABLE_MODEL"] == "3"


def test_kserve_backend_uses_canary_traffic_percent() -> None:
    kinds = [o["kind"] for _, o in render_scenario("kserve")]
    assert "InferenceService" in kinds
    assert not any(
        o["kind"] == "Deployment" and "serving" in o["metadata"]["name"]
        for _, o in render_scenario("kserve")
    )
    isvc = next(o for _, o in render_scenario("kserve") if o["kind"] == "InferenceService")
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 20


# What Knative (KServe's Serverless mode) accepts in a pod spec with its default features
# (knative/serving pkg/apis/serving/fieldmask.go, PodSpecMask; emptyDir volumes are on by
# default), and the fields KServe's ComponentExtensionSpec adds to a predictor.
KNATIVE_POD_FIELDS = {
    "serviceAccountName",
    "containers",
    "volumes",
    "imagePullSecrets",
    "enableServiceLinks",
    "automountServiceAccountToken",
}
KSERVE_COMPONENT_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "labels",
    "annotations",
}


@pytest.mark.parametrize("scenario", ["kserve"])
def test_the_predictor_uses_only_what_knative_accepts_by_default(scenario: str) -> None:
    (isvc,) = [o for _, o in render_scenario(scenario) if o["kind"] == "InferenceService"]
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) - KSERVE_COMPONENT_FIELDS <= KNATIVE_POD_FIELDS
    assert predictor["automountServiceAccountToken"] is False  # Knative allows only false
    assert all("emptyDir" in volume for volume in predictor.get("volumes", []))
    for container in predictor["containers"]:
        for env in container.get("env", []):  # only Secret and ConfigMap references
            assert set(env.get("valueFrom", {})) <= {"secretKeyRef", "configMapKeyRef"}, env


def test_external_s3_drops_minio() -> None:
    objs = render_scenario("external-s3")
    assert not any("minio" in o["metadata"]["name"] for _, o in objs)
    config = next(
        o for _, o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-config")
    )
    assert config["data"]["DIGITLOOP_S3_ENDPOINT"] == "s3.example.internal:9000"
    assert config["data"]["DIGITLOOP_S3_SECURE"] == "true"


def test_monitoring_off_drops_scraping_and_the_dashboard() -> None:
    objs = render_scenario("monitoring-off")
    assert not any(o["metadata"]["name"].endswith("-dashboard") for _, o in objs)
    for _, _label, spec, _ in all_pods("monitoring-off"):
        assert "digitloop.dev/scrape" not in str(spec)
    config = next(o for _, o in objs if o["metadata"]["name"] == "digitloop-config")
    assert "DIGITLOOP_PROMETHEUS_URL" not in config["data"]


def test_the_scrape_marks_match_the_prometheus_job() -> None:
    """Serving pods carry the annotation and track label the platform's scrape job keys on."""
    job = yaml.safe_load((ROOT / "charts" / "platform" / "prometheus.values.yaml").read_text())
    (scrape,) = [
        j for j in yaml.safe_load(job["extraScrapeConfigs"]) if j["job_name"] == "digitloop-serving"
    ]
    relabels = scrape["relabel_configs"]
    assert any(
        r.get("source_labels") == ["__meta_kubernetes_pod_label_digitloop_dev_track"]
        and r.get("target_label") == "track"
        for r in relabels
    )
    assert scrape["honor_labels"] is True  # a metric's own `track` label wins when it has one
    deployment = next(
        o
        for _, o in render_scenario("default")
        if o["metadata"]["name"] == "digitloop-serving-stable" and o["kind"] == "Deployment"
    )
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["digitloop.dev/scrape"] == "true"


def test_the_dashboard_queries_the_service_metrics() -> None:
    import json

    dashboard = next(
        o for _, o in render_scenario("default") if o["metadata"]["name"] == "digitloop-dashboard"
    )
    text = json.dumps(json.loads(dashboard["data"]["digitloop-serving.json"]))
    for metric in (
        "digitloop_requests_total",
        "digitloop_request_duration_seconds_bucket",
        "digitloop_predictions_total",
        "digitloop_corrections_total",
        "digitloop_feedback_total",
        "digitloop_model_info",
        "digitloop_unusual_answers_total",
        # the loop's, emitted by Argo's controller (pipelines/workflows/loop.py)
        "argo_workflows_digitloop_drift_score",
        "argo_workflows_digitloop_canary_decisions",
    ):
        assert metric in text
    assert "{{model_version}}" in text  # Grafana's templates were not eaten by Helm
    assert "{{action}}" in text


def test_the_drift_panel_marks_the_loop_s_threshold() -> None:
    import json

    from pipelines.drift.detect import DriftSettings

    dashboard = next(
        o for _, o in render_scenario("default") if o["metadata"]["name"] == "digitloop-dashboard"
    )
    panels = json.loads(dashboard["data"]["digitloop-serving.json"])["panels"]
    (drift,) = [p for p in panels if "digitloop_drift_score" in json.dumps(p["targets"])]
    steps = drift["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == DriftSettings.model_fields["drift_threshold"].default


def test_the_unusual_panel_is_the_flagged_share_per_track_against_the_novelty_share() -> None:
    """Unusual answers over all answers (digitloop_predictions_total counts the same logged
    answers), per track, 0 rather than no line while nothing is flagged; the red line is
    the share a version's threshold flags of in-distribution drawings."""
    import json

    from model.settings import ModelSettings

    dashboard = next(
        o for _, o in render_scenario("default") if o["metadata"]["name"] == "digitloop-dashboard"
    )
    panels = json.loads(dashboard["data"]["digitloop-serving.json"])["panels"]
    (unusual,) = [p for p in panels if "digitloop_unusual_answers_total" in json.dumps(p)]
    ((target,),) = [unusual["targets"]]
    flagged = "sum by (track) (rate(digitloop_unusual_answers_total[5m]))"
    answers = "sum by (track) (rate(digitloop_predictions_total[5m]))"
    assert target["expr"] == f"({flagged} or 0 * {answers}) / {answers}"
    assert target["legendFormat"] == "{{track}}"
    assert unusual["fieldConfig"]["defaults"]["unit"] == "percentunit"
    steps = unusual["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == ModelSettings.model_fields["novelty_share"].default
    assert len({p["id"] for p in panels}) == len(panels)


def _workflows(rendered: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for _, o in objects(rendered) if o["apiVersion"] == "argoproj.io/v1alpha1"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_rendered_workflows_are_the_hera_objects_with_the_releases_values(
    scenario: str,
) -> None:
    """The chart's templates are the Hera objects with Helm expressions where the release's
    values go: rendered, they are the objects Hera builds with those values, and Argo's
    own expressions come through Helm untouched."""
    from pipelines.workflows.loop import build_cron, build_template

    rendered = {
        o["kind"]: o
        for _, o in render_scenario(scenario)
        if o["apiVersion"] == "argoproj.io/v1alpha1"
    }
    values = workflow_values(scenario_values(scenario))
    assert rendered["CronWorkflow"] == build_cron(values).to_dict()
    assert rendered["WorkflowTemplate"] == build_template(values).to_dict()
    assert "{{workflow.name}}" in str(rendered["WorkflowTemplate"])


def test_release_values_replace_the_generator_defaults() -> None:
    values = {
        "workflow": {"schedule": "0 * * * *", "timezone": "America/New_York"},
        "images": {"app": {"repository": "registry.local/app", "tag": "1.2.3"}},
    }
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name="loop", namespace="ml", is_install=True)
    cron = yaml.safe_load(out["digitloop/templates/workflow-cronworkflow.yaml"])
    template = yaml.safe_load(out["digitloop/templates/workflow-workflowtemplate.yaml"])
    assert cron["spec"]["schedules"] == ["0 * * * *"]
    assert cron["spec"]["timezone"] == "America/New_York"
    assert cron["metadata"]["namespace"] == template["metadata"]["namespace"] == "ml"
    assert template["spec"]["serviceAccountName"] == "loop-digitloop-workflow"
    step = template["spec"]["templates"][0]["container"]
    assert step["image"] == "registry.local/app:1.2.3"
    assert [e for e in step["envFrom"]] == [
        {"configMapRef": {"name": "loop-digitloop-config"}},
        {"secretRef": {"name": "loop-digitloop-secrets"}},
    ]
    rollout = {
        t["name"]
        for t in template["spec"]["templates"]
        if t.get("serviceAccountName") == "loop-digitloop-rollout"
    }
    assert rollout == {"canary", "analyse"}
    # and nothing else differs from what Hera builds with this release's values
    from pipelines.workflows.loop import build_cron, build_template

    release = workflow_values(values, release="loop", namespace="ml")
    assert _workflows(out) == {
        "CronWorkflow": build_cron(release).to_dict(),
        "WorkflowTemplate": build_template(release).to_dict(),
    }


def test_the_pull_policy_reaches_every_step() -> None:
    out = render({"images": {"app": {"pullPolicy": "Always"}}})
    templates = _workflows(out)["WorkflowTemplate"]["spec"]["templates"]
    policies = {t["container"]["imagePullPolicy"] for t in templates if "container" in t}
    assert policies == {"Always"}


def test_the_workflows_render_only_when_enabled() -> None:
    assert set(_workflows(render())) == {"CronWorkflow", "WorkflowTemplate"}
    assert _workflows(render({"workflow": {"enabled": False}})) == {}


def test_secrets_are_generated_once_per_render_and_shared() -> None:
    objs = {
        o["metadata"]["name"]: o for _, o in render_scenario("default") if o["kind"] == "Secret"
    }
    minio = objs["digitloop-minio"]["stringData"]
    app = objs["digitloop-secrets"]["stringData"]
    assert len(minio["secretKey"]) == 32
    assert app["DIGITLOOP_S3_SECRET_KEY"] == minio["secretKey"]
    assert app["DIGITLOOP_S3_ACCESS_KEY"] == minio["accessKey"]
    given = render({"secrets": {"adminToken": "given-token"}})
    assert "given-token" in given["digitloop/templates/secrets-secret.yaml"]
    assert "given-token" not in "".join(v for k, v in given.items() if "secret" not in k)


def roles(scenario: str) -> dict[str, dict[tuple[str, str], list[str]]]:
    """Role name -> {(apiGroup, resource or resource/name): verbs} of a scenario."""
    found: dict[str, dict[tuple[str, str], list[str]]] = {}
    for _, o in render_scenario(scenario):
        if o["kind"] != "Role":
            continue
        assert o["metadata"]["namespace"] == NAMESPACE
        rules = found.setdefault(o["metadata"]["name"], {})
        for rule in o["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for name in rule.get("resourceNames", [""]):
                        key = (group, f"{resource}/{name}" if name else resource)
                        rules[key] = rule["verbs"]
    return found


def bound_accounts(scenario: str) -> dict[str, str]:
    """Service account -> the Role bound to it."""
    return {
        subject["name"]: o["roleRef"]["name"]
        for _, o in render_scenario(scenario)
        if o["kind"] == "RoleBinding"
        for subject in o["subjects"]
    }


def step_accounts(scenario: str) -> dict[str, str]:
    """Template name -> the service account its pod runs as in the rendered WorkflowTemplate."""
    (template,) = [o for _, o in render_scenario(scenario) if o["kind"] == "WorkflowTemplate"]
    default = template["spec"]["serviceAccountName"]
    return {
        t["name"]: t.get("serviceAccountName", default)
        for t in template["spec"]["templates"]
        if "container" in t
    }


EXECUTOR = {("argoproj.io", "workflowtaskresults"): ["create", "patch"]}


@pytest.mark.parametrize(
    ("scenario", "reads"),
    [
        ("default", ("", "configmaps/digitloop-routing")),
        ("kserve", ("serving.kserve.io", "inferenceservices/digitloop-serving")),
    ],
)
def test_the_reading_steps_may_only_report_and_read_what_serves(
    scenario: str, reads: tuple[str, str]
) -> None:
    """collect, quality, drift, decide, retrain and finish: no Secret, nothing of the release
    to write; Argo's executor reports their outputs, collect reads the routing."""
    accounts = step_accounts(scenario)
    readers = {name: account for name, account in accounts.items()}
    for step in ("canary", "analyse"):
        readers.pop(step)
    assert set(readers) == {"collect", "quality", "drift", "decide", "retrain", "compact", "finish"}
    assert set(readers.values()) == {"digitloop-workflow"}
    role = roles(scenario)[bound_accounts(scenario)["digitloop-workflow"]]
    assert role == {**EXECUTOR, reads: ["get"]}


def test_only_the_rollout_steps_may_upgrade_the_release() -> None:
    accounts = step_accounts("default")
    assert {s for s, a in accounts.items() if a == "digitloop-rollout"} == {"canary", "analyse"}
    role = roles("default")[bound_accounts("default")["digitloop-rollout"]]
    # `helm upgrade` of the release applies every object the chart renders (--no-hooks: no
    # Jobs) and keeps the release in Secrets: the rollout account may write each such kind.
    group_of = {"v1": ""}
    kinds = {
        (group_of.get(o["apiVersion"], o["apiVersion"].split("/")[0]), o["kind"])
        for _, o in render_scenario("canary-20")
        if "helm.sh/hook" not in o["metadata"].get("annotations", {})
    }
    plural = {
        "NetworkPolicy": "networkpolicies",
        "PodDisruptionBudget": "poddisruptionbudgets",
    }
    for group, kind in kinds | {("", "Secret")}:
        resource = plural.get(kind, kind.lower() + "s")
        verbs = role.get((group, resource))
        assert verbs is not None, f"the rollout account cannot touch {kind}"
        assert {"get", "patch", "update"} <= set(verbs), (kind, verbs)
    for verbs in role.values():
        assert "*" not in verbs
    assert not any(o["kind"].startswith("Cluster") for _, o in render_scenario("default"))


def test_with_kserve_the_rollout_steps_may_only_read_and_patch_its_inference_service() -> None:
    objs = render_scenario("kserve")
    role = roles("kserve")[bound_accounts("kserve")["digitloop-rollout"]]
    assert role == {
        **EXECUTOR,
        ("serving.kserve.io", "inferenceservices/digitloop-serving"): ["get", "patch"],
    }
    (isvc,) = [o for _, o in objs if o["kind"] == "InferenceService"]
    config = next(o for _, o in objs if o["metadata"]["name"] == "digitloop-config")["data"]
    assert config["DIGITLOOP_ROLLOUT"] == "kserve"
    assert config["DIGITLOOP_INFERENCE_SERVICE"] == isvc["metadata"]["name"]


@pytest.mark.parametrize("scenario", ["default", "canary-20", "canary-0"])
def test_the_routing_config_map_says_what_the_values_say(scenario: str) -> None:
    from pipelines.rollout.helm import routing_from_config_map
    from tests.chart.render import scenario_values

    objs = render_scenario(scenario)
    (routing,) = [o for _, o in objs if o["metadata"]["name"] == "digitloop-routing"]
    serving = scenario_values(scenario).get("serving", {})
    canary = serving.get("canary", {})
    expected = RoutingState(
        str(serving.get("stable", {}).get("modelVersion", "champion")),
        str(canary["modelVersion"]) if canary.get("enabled") else None,
        canary.get("weight", 0) if canary.get("enabled") else 0,
    )
    assert routing_from_config_map(routing["data"]) == expected
    config = next(o for _, o in objs if o["metadata"]["name"] == "digitloop-config")["data"]
    assert config["DIGITLOOP_ROUTING_CONFIG_MAP"] == routing["metadata"]["name"]


def test_with_kserve_knative_may_reach_the_predictor_s_queue_proxy() -> None:
    def serving_policy(scenario: str) -> dict:
        return next(
            o
            for _, o in render_scenario(scenario)
            if o["metadata"]["name"] == "digitloop-netpol-serving"
        )

    rules = serving_policy("kserve")["spec"]["ingress"]
    knative = [r for r in rules if {"port": 8012, "protocol": "TCP"} in r["ports"]]
    assert len(knative) == 1
    sources = {
        f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for f in knative[0]["from"]
    }
    assert sources == {"knative-serving", "kourier-system"}
    gateway_ports = {
        p["port"] for r in serving_policy("default")["spec"]["ingress"] for p in r["ports"]
    }
    assert gateway_ports == {3000}


def test_network_policies_deny_by_default() -> None:
    policies = {
        o["metadata"]["name"]: o
        for _, o in render_scenario("default")
        if o["kind"] == "NetworkPolicy"
    }
    deny = policies["digitloop-netpol-deny-all"]["spec"]
    assert (
        deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    )
    assert set(policies) >= {f"digitloop-netpol-{c}" for c in ("serving", "ui", "mlflow", "minio")}


@pytest.mark.parametrize("scenario", ["default", "canary-20"])
def test_the_footprint_fits_the_budget(scenario: str) -> None:
    cpu, mem = footprint(scenario)
    assert cpu <= 2.0, cpu
    assert mem <= 4 * 2**30, mem / 2**30
