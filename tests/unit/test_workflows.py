"""The loop's Argo objects: the chart's templates current, valid against Argo's and
Kubernetes' schemas, and the same DAG as the in-process runner (:mod:`pipelines.runners.local`).

``DIGITLOOP_REGENERATE=1 pytest tests/unit/test_workflows.py`` rewrites the chart's templates.
What Helm makes of them, with a release's values, is tested in tests/chart/test_invariants.py.
"""

from __future__ import annotations

import inspect
import itertools
import os
import re
import typing
from datetime import UTC, datetime

import kubernetes_validate
import pytest
import yaml
from hera.workflows import CronWorkflow, WorkflowTemplate
from hera.workflows import models as argo
from typer.testing import CliRunner

from pipelines.cli import workflow_app
from pipelines.dag import NEEDS, ORDER, OUTPUTS, READS, STEP_NAMES, WHEN, When, should_run
from pipelines.outputs import (
    CollectCounts,
    CollectOutput,
    DecideOutput,
    RetrainOutput,
    RunOutputs,
    StepOutput,
    argo_text,
)
from pipelines.runners.argo import write_output_files
from pipelines.steps import STEPS
from pipelines.workflows.loop import (
    CHART_VALUES,
    FILES,
    HELM,
    STEP_OUTPUTS,
    ReleaseValues,
    build_cron,
    build_template,
    chart_template,
    render,
)
from tests.chart.render import CHART, workflow_values

TEMPLATES = CHART / "templates"
KUBERNETES = "1.36"  # the kind node's version (kind-config.yaml)
REF = re.compile(r"\{\{tasks\.(\w+)\.outputs\.parameters\.(\w+)\}\}")
WHEN_FORM = re.compile(r"^(\{\{tasks\.\w+\.outputs\.parameters\.\w+\}\}) == (true|false)$")
# What the chart's default values put in the objects, for the release "digitloop".
RELEASE = workflow_values()
(CRON_FILE,) = [name for name, build in FILES.items() if build is build_cron]


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return render()


@pytest.fixture(scope="module")
def template() -> dict:
    return build_template(RELEASE).to_dict()


@pytest.fixture(scope="module")
def cron() -> dict:
    return build_cron(RELEASE).to_dict()


@pytest.fixture(scope="module")
def dag(template) -> dict[str, dict]:
    (entry,) = [t for t in template["spec"]["templates"] if t["name"] == "loop"]
    return {task["name"]: task for task in entry["dag"]["tasks"]}


@pytest.fixture(scope="module")
def containers(template) -> dict[str, dict]:
    return {t["name"]: t for t in template["spec"]["templates"] if "container" in t}


# -- the chart's templates ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_chart_templates_are_a_fresh_render(rendered, name):
    path = TEMPLATES / name
    if os.environ.get("DIGITLOOP_REGENERATE") == "1":
        path.write_text(rendered[name], encoding="utf-8")
    assert path.exists(), f"{path} missing: run `make workflow`"
    assert path.read_text(encoding="utf-8") == rendered[name], (
        f"{path} is stale: run `make workflow` (or DIGITLOOP_REGENERATE=1 pytest)"
    )


def test_render_is_deterministic(rendered):
    assert render() == rendered


def test_every_release_value_has_its_helm_expression_in_the_templates(rendered):
    """Each value is a Helm expression, quoted by Helm; no token is left; the whole file
    renders only when the workflow is enabled; and every ``{{`` that is not Helm's is
    Argo's, escaped as a raw string so that Helm leaves it to Argo."""
    assert set(HELM) == set(typing.get_type_hints(ReleaseValues))
    text = "".join(rendered.values())
    for expression in HELM.values():
        assert "{{ " + expression + " | quote }}" in text, expression
    assert "__helm_" not in text
    for name, body in rendered.items():
        lines = body.splitlines()
        assert lines[2] == "{{- if .Values.workflow.enabled }}" and lines[-1] == "{{- end }}", name
    actions = re.findall(r"\{\{.*?\}\}(?:`\}\})?", text)
    argo = [a for a in actions if a.startswith("{{`{{")]
    helm = [a for a in actions if not a.startswith("{{`{{")]
    assert {a for a in helm if not a.startswith(("{{- /*", "{{- if", "{{- end"))} == {
        "{{ " + expression + " | quote }}" for expression in HELM.values()
    }
    assert all(re.fullmatch(r"\{\{`\{\{[\w.]+\}\}`\}\}", a) for a in argo), argo
    assert "{{`{{workflow.name}}`}}" in argo


def test_a_release_value_must_be_a_whole_yaml_value():
    """Helm quotes what it puts in; inside a longer string that would not be valid YAML."""
    assert chart_template("image: '__helm_image__'\n").endswith(
        '\nimage: {{ include "digitloop.image" (dict "root" $ "image" "app") | quote }}\n'
        "{{- end }}\n"
    )
    with pytest.raises(ValueError, match="__helm_image__ is part of a longer value"):
        chart_template("image: registry/__helm_image__\n")


@pytest.mark.parametrize(
    ("build", "model", "hera"),
    [
        (build_template, argo.WorkflowTemplate, WorkflowTemplate),
        (build_cron, argo.CronWorkflow, CronWorkflow),
    ],
)
def test_each_object_parses_back_through_argos_models_losslessly(build, model, hera):
    """Hera's models are generated from Argo's OpenAPI schema (v4.0.5); they ignore unknown
    keys, so the dump must give back the whole document: no key unknown to Argo."""
    for values in (RELEASE, CHART_VALUES):
        document = yaml.safe_load(build(values).to_yaml(width=100))
        parsed = model.model_validate(document)
        assert parsed.model_dump(by_alias=True, exclude_none=True, mode="json") == document
        assert hera.from_dict(document).to_dict() == document


def test_every_pod_is_a_valid_kubernetes_pod(template, containers):
    """The pod each template becomes, against Kubernetes' strict schema (unknown keys fail)."""
    spec = template["spec"]
    for name, tpl in containers.items():
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"x-{name}", "labels": spec["podMetadata"]["labels"]},
            "spec": {
                "serviceAccountName": spec["serviceAccountName"],
                "securityContext": spec["securityContext"],
                "activeDeadlineSeconds": tpl["activeDeadlineSeconds"],
                "volumes": spec["volumes"],
                "containers": [{"name": "main", **tpl["container"]}],
            },
        }
        kubernetes_validate.validate(pod, KUBERNETES, strict=True)


# -- the DAG against pipelines.runners.local and pipelines.steps ----------------------------


def test_the_tasks_are_the_loops_steps_in_a_valid_order(dag):
    assert list(dag) == list(ORDER)
    assert set(ORDER) == set(STEPS) == set(NEEDS) == set(WHEN)
    for position, name in enumerate(ORDER):
        assert set(NEEDS[name]) <= set(ORDER[:position]), f"{name} runs before what it needs"


def test_each_task_depends_on_the_success_of_every_step_it_reads(dag):
    for name, task in dag.items():
        expected = " && ".join(f"{need}.Succeeded" for need in NEEDS[name])
        assert task.get("depends", "") == expected, name
        assert "dependencies" not in task, name


def test_when_reads_only_outputs_that_exist_when_it_is_evaluated(dag, containers):
    """A `when` on the outputs of a skipped task is an Argo error: only read steps that must
    have succeeded (the task depends on `<step>.Succeeded`), and only declared outputs."""
    for name, task in dag.items():
        if "when" not in task:
            continue
        assert WHEN_FORM.match(task["when"]), f"{name}: unexpected form {task['when']!r}"
        for step, key in REF.findall(task["when"]):
            assert f"{step}.Succeeded" in task["depends"].split(" && "), (name, step)
            declared = {
                p["name"] for p in containers[dag[step]["template"]]["outputs"]["parameters"]
            }
            assert key in declared, f"{name} reads {step}.{key}, which {step} does not declare"


def _consumed(dag) -> list[tuple[str, str]]:
    return sorted({ref for task in dag.values() for ref in REF.findall(task.get("when", ""))})


def _argo(dag: dict[str, dict], files: dict[tuple[str, str], str]) -> set[str]:
    """Which tasks Argo runs, by its rules: `depends` first (else Omitted), then `when`."""
    phase: dict[str, str] = {}
    for name in ORDER:  # a topological order (tested above)
        task = dag[name]
        terms = [t for t in task.get("depends", "").split(" && ") if t]
        met = all(
            phase[t.removesuffix(".Succeeded")] == "Succeeded"
            if t.endswith(".Succeeded")
            else phase[t] in ("Succeeded", "Skipped")
            for t in terms
        )
        if not met:
            phase[name] = "Omitted"
            continue
        if "when" in task:
            lhs, rhs = WHEN_FORM.match(task["when"]).groups()
            step, key = REF.match(lhs).groups()
            assert phase[step] == "Succeeded", f"{name}'s when reads {step}, which did not run"
            if files[(step, key)] != rhs:
                phase[name] = "Skipped"
                continue
        phase[name] = "Succeeded"
    return {name for name, p in phase.items() if p == "Succeeded"}


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _output(step: str, flags: dict[str, bool]) -> StepOutput:
    """A valid output of ``step`` with ``flags``, the fields the conditions read."""
    match step:
        case "collect":
            active = flags["canary_active"]
            return CollectOutput(
                since=EPOCH,
                until=datetime.now(UTC),
                counts=CollectCounts(predictions=0, feedback=0, joined=0, pending=0, orphaned=0),
                stable_version="1",
                canary_version="2" if active else None,
                canary_weight=20 if active else 0,
                canary_active=active,
            )
        case "decide":
            return DecideOutput(retrain=flags["retrain"], reasons=("a reason",))
        case "retrain":
            return RetrainOutput(
                challenger="2",
                mlflow_run_id=None,
                mnist_test_accuracy=0.99,
                holdout_accuracy=None,
                gate_passed=flags["gate_passed"],
                gate_reasons=(),
                train_samples=0,
                holdout_samples=0,
            )
    assert not flags, f"no sample output of {step} with {flags}"
    return OUTPUTS[step].model_construct()  # nothing reads it: any instance says "it ran"


def _flags(values: dict[tuple[str, str], bool], step: str) -> dict[str, bool]:
    return {key: v for (of, key), v in values.items() if of == step}


def _local(values: dict[tuple[str, str], bool]) -> set[str]:
    """Which steps the in-process runner runs (as :func:`pipelines.runners.local.run_once`)."""
    outputs = RunOutputs()
    for name in ORDER:
        if should_run(name, outputs):
            outputs = outputs.with_output(_output(name, _flags(values, name)))
    return set(outputs.ran)


def test_argo_runs_the_same_steps_as_the_local_runner_for_every_outcome(dag, tmp_path):
    """Every combination of the outputs the conditions read, written to files as the step
    pods write them: Argo's DAG and pipelines.dag.WHEN must pick the same steps."""
    consumed = _consumed(dag)
    assert consumed, "no task reads an output"
    seen = set()
    for combo in itertools.product([False, True], repeat=len(consumed)):
        values = dict(zip(consumed, combo, strict=True))
        files = {}
        for step in {step for step, _ in consumed}:
            write_output_files(_output(step, _flags(values, step)), tmp_path / step)
        for step, key in consumed:
            files[(step, key)] = (tmp_path / step / key).read_text()
        ran = _argo(dag, files)
        assert ran == _local(values), values
        seen.add(frozenset(ran))
    # collect alone, a canary judged, no retrain, a gate failed, a canary started
    assert len(seen) >= 4


def test_a_missing_output_reads_as_its_argo_default():
    """The local runner reads an output that is not there as Argo reads a missing file."""
    for name, condition in WHEN.items():
        if condition is None:
            continue
        default = condition.output.argo_outputs()[condition.field].default
        assert should_run(name, RunOutputs()) is (default == condition.value), name


def test_conditions_name_flags_of_the_outputs_argo_declares():
    """A condition names a field of a step's output model: a renamed or unmarked field, or
    one that is not a flag, fails when pipelines.dag is imported."""
    for field in ("canary_activ", "stable_version"):
        with pytest.raises(TypeError, match=f"CollectOutput.{field}"):
            When(CollectOutput, field, False)
    for name, condition in WHEN.items():
        if condition is not None:
            assert condition.step in NEEDS[name], name


def test_each_step_takes_the_outputs_the_dag_says_it_reads():
    """The step functions' keyword arguments are their upstream outputs, typed; each
    returns its own output model, which pipelines.dag and the workflow read."""
    assert tuple(RunOutputs.model_fields) == ORDER == tuple(OUTPUTS)
    for name, function in STEPS.items():
        hints = typing.get_type_hints(function)
        parameters = list(inspect.signature(function).parameters)
        assert parameters[0] == "ctx", name
        assert {p: hints[p] for p in parameters[1:]} == {o.name: o for o in READS[name]}, name
        assert hints["return"] is OUTPUTS[name] and OUTPUTS[name].name == name, name


def test_conditions_default_to_doing_nothing_when_an_output_file_is_missing(dag, containers):
    for step, key in _consumed(dag):
        (param,) = [
            p
            for p in containers[dag[step]["template"]]["outputs"]["parameters"]
            if p["name"] == key
        ]
        assert param["valueFrom"]["default"] == "false", (step, key)


# -- every container -----------------------------------------------------------------------


def test_every_container_runs_one_step_of_its_run(template, containers, dag):
    assert template["spec"]["onExit"] == "finish"
    assert set(containers) == {task["template"] for task in dag.values()} | {"finish"}
    for name, tpl in containers.items():
        c = tpl["container"]
        assert c["command"] + c["args"][:2] == ["digitloop", "loop", "step"], name
        step = c["args"][2]
        assert step in set(STEPS) | {"finish"} and step in STEP_NAMES, name
        assert c["args"][3:] == ["--run-id", "{{workflow.name}}", "--outputs-dir", "/tmp/outputs"]
        for param in tpl.get("outputs", {}).get("parameters", []):
            assert param["valueFrom"]["path"] == f"/tmp/outputs/{param['name']}", name
            assert "default" in param["valueFrom"], (name, param["name"])
        # exactly the fields its output model marks, with the defaults the marks give
        declared = {
            p["name"]: p["valueFrom"]["default"]
            for p in tpl.get("outputs", {}).get("parameters", [])
        }
        marks = STEP_OUTPUTS[step].argo_outputs()
        assert declared == {field: argo_text(m.default) for field, m in marks.items()}, name
    for name, task in dag.items():
        assert containers[task["template"]]["container"]["args"][2] == name


def test_every_container_is_locked_down(template, containers):
    pod = template["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    (tmp,) = template["spec"]["volumes"]
    assert "emptyDir" in tmp
    for name, tpl in containers.items():
        c = tpl["container"]
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"] == {"drop": ["ALL"]}, name
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert {"name": tmp["name"], "mountPath": "/tmp"} in c["volumeMounts"], name


def test_every_container_has_requests_limits_and_a_retry_with_backoff(containers):
    for name, tpl in containers.items():
        resources = tpl["container"]["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) == {"cpu", "memory"}, (name, kind)
        retry = tpl["retryStrategy"]
        assert int(retry["limit"]) >= 1 and retry["backoff"]["duration"], name
        assert int(retry["backoff"]["factor"]) >= 2, name
        assert int(tpl["activeDeadlineSeconds"]) > 0, name
    memory = {
        n: _mib(t["container"]["resources"]["requests"]["memory"]) for n, t in containers.items()
    }
    assert memory["retrain"] == max(memory.values()) > memory["collect"]


def _mib(quantity: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(Mi|Gi)", quantity).groups()
    return float(number) * {"Mi": 1, "Gi": 1024}[unit]


def test_every_container_runs_the_pinned_app_image_with_its_config(containers):
    for name, tpl in containers.items():
        c = tpl["container"]
        assert c["image"] == RELEASE.image, name
        assert c["imagePullPolicy"] == "IfNotPresent", name
        assert c["envFrom"] == [
            {"configMapRef": {"name": RELEASE.config_map}},
            {"secretRef": {"name": RELEASE.secret}},
        ], name
    assert ":" in RELEASE.image and not RELEASE.image.endswith(":latest")


def test_release_values_reach_the_objects():
    values = ReleaseValues(
        image="registry.local/digitloop-app:1.2.3",
        pull_policy="Always",
        namespace="ml",
        schedule="0 * * * *",
        timezone="Europe/Paris",
        service_account="sa",
        rollout_service_account="rsa",
        config_map="cm",
        secret="sec",
    )
    t, c = build_template(values).to_dict(), build_cron(values).to_dict()
    assert t["metadata"]["namespace"] == c["metadata"]["namespace"] == "ml"
    assert t["spec"]["serviceAccountName"] == "sa"
    assert c["spec"]["schedules"] == ["0 * * * *"]
    assert c["spec"]["timezone"] == "Europe/Paris"
    main = t["spec"]["templates"][0]["container"]
    assert main["image"] == "registry.local/digitloop-app:1.2.3"
    assert main["imagePullPolicy"] == "Always"
    assert main["envFrom"] == [{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "sec"}}]
    rollout = {x["name"] for x in t["spec"]["templates"] if x.get("serviceAccountName") == "rsa"}
    assert rollout == {"canary", "analyse"}


# -- the schedule ---------------------------------------------------------------------------


def test_the_cron_runs_the_template_one_run_at_a_time(cron, template):
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["workflowSpec"] == {"workflowTemplateRef": {"name": template["metadata"]["name"]}}
    assert cron["metadata"]["namespace"] == template["metadata"]["namespace"]
    assert spec["schedules"] == [RELEASE.schedule] and spec["timezone"] == RELEASE.timezone
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] > 0 and spec["failedJobsHistoryLimit"] > 0
    # finished runs and their pods are cleaned up; a stuck run cannot block the cron forever
    assert template["spec"]["podGC"]["strategy"] and template["spec"]["ttlStrategy"]
    assert template["spec"]["activeDeadlineSeconds"] > 0


# -- the command ----------------------------------------------------------------------------


def test_render_command_writes_and_check_catches_a_stale_file(tmp_path, monkeypatch):
    for var in [v for v in os.environ if v.startswith("DIGITLOOP_")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)  # no .env
    runner = CliRunner()
    out = tmp_path / "templates"
    check = ["render", "--out", str(out), "--check"]
    assert runner.invoke(workflow_app, check).exit_code == 1  # nothing there yet
    assert runner.invoke(workflow_app, ["render", "--out", str(out)]).exit_code == 0
    assert {p.name for p in out.iterdir()} == set(FILES)
    assert runner.invoke(workflow_app, check).exit_code == 0
    cron = out / CRON_FILE
    cron.write_text(cron.read_text().replace("Forbid", "Allow"))
    result = runner.invoke(workflow_app, [*check, "--json"])
    assert result.exit_code == 1 and f'"stale": ["{CRON_FILE}"]' in result.stdout


def test_every_step_metric_reads_an_output_the_step_declares() -> None:
    """A metric on an output the step does not write would be emitted from an empty string."""
    from pipelines.workflows.loop import PODS

    with_metrics = {name: pod for name, pod in PODS.items() if pod.metrics}
    assert set(with_metrics) == {"drift", "analyse"}
    for name, pod in with_metrics.items():
        for metric in pod.metrics:
            assert metric.name.startswith("digitloop_")
            text = str(vars(metric))
            for output in re.findall(r"outputs\.parameters\.(\w+)", text):
                assert output in STEP_OUTPUTS[name].argo_outputs(), (name, output)
