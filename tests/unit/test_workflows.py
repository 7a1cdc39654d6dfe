"""The loop's Argo objects: current committed YAML, valid against Argo's and Kubernetes'
schemas, and the same DAG as the in-process runner (:mod:`pipelines.runners.local`).

``DIGITLOOP_REGENERATE=1 pytest tests/unit/test_workflows.py`` rewrites ``manifests/``.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from hera.workflows import CronWorkflow, WorkflowTemplate
from hera.workflows import models as argo
from typer.testing import CliRunner

from pipelines.cli import workflow_app, write_output_files
from pipelines.dag import NEEDS, ORDER, STEP_NAMES, WHEN, should_run
from pipelines.steps import STEPS
from pipelines.workflows.loop import FILES, WorkflowSettings, build_cron, build_template, render

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
KUBERNETES = "1.36"  # the kind node's version (kind-config.yaml)
REF = re.compile(r"\{\{tasks\.(\w+)\.outputs\.parameters\.(\w+)\}\}")
WHEN_FORM = re.compile(r"^(\{\{tasks\.\w+\.outputs\.parameters\.\w+\}\}) == (true|false)$")
# Every field at its documented default, whatever DIGITLOOP_* says in this environment.
DEFAULTS = WorkflowSettings(
    _env_file=None, **{name: f.default for name, f in WorkflowSettings.model_fields.items()}
)


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return render(DEFAULTS)


@pytest.fixture(scope="module")
def template(rendered) -> dict:
    return yaml.safe_load(rendered[FILES["template"]])


@pytest.fixture(scope="module")
def cron(rendered) -> dict:
    return yaml.safe_load(rendered[FILES["cron"]])


@pytest.fixture(scope="module")
def dag(template) -> dict[str, dict]:
    (entry,) = [t for t in template["spec"]["templates"] if t["name"] == "loop"]
    return {task["name"]: task for task in entry["dag"]["tasks"]}


@pytest.fixture(scope="module")
def containers(template) -> dict[str, dict]:
    return {t["name"]: t for t in template["spec"]["templates"] if "container" in t}


# -- the committed files ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FILES.values()))
def test_committed_yaml_is_a_fresh_render(rendered, name):
    path = MANIFESTS / name
    if os.environ.get("DIGITLOOP_REGENERATE") == "1":
        path.write_text(rendered[name], encoding="utf-8")
    assert path.exists(), f"{path} missing: run `digitloop workflow render`"
    assert path.read_text(encoding="utf-8") == rendered[name], (
        f"{path} is stale: run `digitloop workflow render` (or DIGITLOOP_REGENERATE=1 pytest)"
    )


def test_render_is_deterministic(rendered):
    assert render(DEFAULTS) == rendered


@pytest.mark.parametrize(
    ("name", "model", "hera"),
    [
        (FILES["template"], argo.WorkflowTemplate, WorkflowTemplate),
        (FILES["cron"], argo.CronWorkflow, CronWorkflow),
    ],
)
def test_each_file_parses_back_through_argos_models_losslessly(rendered, name, model, hera):
    """Hera's models are generated from Argo's OpenAPI schema (v4.0.5); they ignore unknown
    keys, so the dump must give back the whole document: no key unknown to Argo."""
    document = yaml.safe_load(rendered[name])
    parsed = model.model_validate(document)
    assert parsed.model_dump(by_alias=True, exclude_none=True, mode="json") == document
    assert hera.from_dict(document).to_dict() == document


def test_the_builders_give_what_is_committed(template, cron):
    assert build_template(DEFAULTS).to_dict() == template
    assert build_cron(DEFAULTS).to_dict() == cron


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


def _local(values: dict[tuple[str, str], bool]) -> set[str]:
    """Which steps the in-process runner runs (as :func:`pipelines.runners.local.run_once`)."""
    outputs: dict[str, dict] = {}
    for name in ORDER:
        if should_run(name, outputs):
            outputs[name] = {key: v for (step, key), v in values.items() if step == name}
    return set(outputs)


def test_argo_runs_the_same_steps_as_the_local_runner_for_every_outcome(dag, tmp_path):
    """Every combination of the outputs the conditions read, written to files as the step
    CLI writes them: Argo's DAG and pipelines.runners.local.WHEN must pick the same steps."""
    consumed = _consumed(dag)
    assert consumed, "no task reads an output"
    seen = set()
    for combo in itertools.product([False, True], repeat=len(consumed)):
        values = dict(zip(consumed, combo, strict=True))
        files = {}
        for (step, key), value in values.items():
            write_output_files({key: value}, tmp_path / step)
            files[(step, key)] = (tmp_path / step / key).read_text()
        ran = _argo(dag, files)
        assert ran == _local(values), values
        seen.add(frozenset(ran))
    # collect alone, a canary judged, no retrain, a gate failed, a canary started
    assert len(seen) >= 4


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
        assert c["image"] == DEFAULTS.image, name
        assert c["imagePullPolicy"] == "IfNotPresent", name
        assert c["envFrom"] == [
            {"configMapRef": {"name": DEFAULTS.config_map}},
            {"secretRef": {"name": DEFAULTS.secret}},
        ], name
    assert ":" in DEFAULTS.image and not DEFAULTS.image.endswith(":latest")


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("digitloop-app:0.1.0", True),
        ("localhost:5001/digitloop-app:0.1.0", True),
        ("ghcr.io/x/digitloop-app@sha256:" + "a" * 64, True),
        ("digitloop-app", False),
        ("digitloop-app:latest", False),
        ("localhost:5001/digitloop-app", False),
    ],
)
def test_the_image_must_be_pinned(image, ok):
    if ok:
        assert WorkflowSettings(_env_file=None, image=image).image == image
    else:
        with pytest.raises(ValueError, match="pinned"):
            WorkflowSettings(_env_file=None, image=image)


def test_settings_reach_the_objects():
    s = WorkflowSettings(
        _env_file=None,
        image="registry.local/digitloop-app:1.2.3",
        namespace="ml",
        schedule="0 * * * *",
        timezone="Europe/Paris",
        service_account="sa",
        config_map="cm",
        secret="sec",
    )
    t, c = build_template(s).to_dict(), build_cron(s).to_dict()
    assert t["metadata"]["namespace"] == c["metadata"]["namespace"] == "ml"
    assert t["spec"]["serviceAccountName"] == "sa"
    assert c["spec"]["schedules"] == ["0 * * * *"] and c["spec"]["timezone"] == "Europe/Paris"
    main = t["spec"]["templates"][0]["container"]
    assert main["image"] == "registry.local/digitloop-app:1.2.3"
    assert main["envFrom"] == [{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "sec"}}]
    with pytest.raises(ValueError, match="time zone"):
        WorkflowSettings(_env_file=None, timezone="Mars/Olympus")


# -- the schedule ---------------------------------------------------------------------------


def test_the_cron_runs_the_template_one_run_at_a_time(cron, template):
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["workflowSpec"] == {"workflowTemplateRef": {"name": template["metadata"]["name"]}}
    assert cron["metadata"]["namespace"] == template["metadata"]["namespace"]
    assert spec["schedules"] == [DEFAULTS.schedule] and spec["timezone"] == DEFAULTS.timezone
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
    out = tmp_path / "manifests"
    check = ["render", "--out", str(out), "--check"]
    assert runner.invoke(workflow_app, check).exit_code == 1  # nothing there yet
    assert runner.invoke(workflow_app, ["render", "--out", str(out)]).exit_code == 0
    assert {p.name for p in out.iterdir()} == set(FILES.values())
    assert runner.invoke(workflow_app, check).exit_code == 0
    cron = out / FILES["cron"]
    cron.write_text(cron.read_text().replace("Forbid", "Allow"))
    result = runner.invoke(workflow_app, [*check, "--json"])
    assert result.exit_code == 1 and '"stale": ["cron-workflow.yaml"]' in result.stdout


def test_every_step_metric_reads_an_output_the_step_declares() -> None:
    """A metric on an output the step does not write would be emitted from an empty string."""
    import re

    from pipelines.workflows.loop import DAG_STEPS

    with_metrics = {name: step for name, step in DAG_STEPS.items() if step.metrics}
    assert set(with_metrics) == {"drift", "analyse"}
    for name, step in with_metrics.items():
        for metric in step.metrics:
            assert metric.name.startswith("digitloop_")
            text = str(vars(metric))
            for output in re.findall(r"outputs\.parameters\.(\w+)", text):
                assert output in step.outputs, (name, output)
