"""The loop on Argo: a WorkflowTemplate holding the DAG, and a CronWorkflow that runs it.

Each DAG task is one pod running ``digitloop loop step NAME`` (:mod:`pipelines.runners.argo`)
in the app image; steps hand their outputs to each other through the store, and write the
fields marked as Argo outputs (:mod:`pipelines.outputs`) to ``/tmp/outputs/<field>``, which
this declares as the task's output parameters, with their defaults, from the same marks. The
tasks, their dependencies and conditions come from :mod:`pipelines.dag`, the description
the in-process runner follows.

A task depends on ``<need>.Succeeded`` for every step it reads, never on a bare name: a
bare name also counts Skipped, and a ``when`` on the outputs of a skipped task fails to
resolve (an error, or a workflow stuck requeueing: argo-workflows#14498, #15837). With
``.Succeeded`` such a task is Omitted instead, and nothing is left to resolve.

What the release decides (namespace, image, names, schedule) is a :class:`ReleaseValues`:
:data:`CHART_VALUES` puts Helm expressions there, and :func:`render` writes both objects as
the chart's templates, the one copy of their YAML; tests build them with a release's values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hera.workflows import (
    DAG,
    ConfigMapEnvFrom,
    Container,
    Counter,
    CronWorkflow,
    EmptyDirVolume,
    Env,
    Gauge,
    Label,
    Parameter,
    Resources,
    RetryStrategy,
    SecretEnvFrom,
    Task,
    WorkflowTemplate,
)
from hera.workflows.models import (
    Backoff,
    Capabilities,
    Metadata,
    Mutex,
    PodGC,
    PodSecurityContext,
    SeccompProfile,
    SecurityContext,
    Synchronization,
    TTLStrategy,
    ValueFrom,
    VolumeMount,
    WorkflowTemplateRef,
)

from contracts.settings import DigitloopSettings
from pipelines.dag import FINISH, NEEDS, ORDER, OUTPUTS, WHEN
from pipelines.outputs import AnalyseOutput, DriftOutput, StepOutput, Summary, argo_text

NAME = "digitloop-loop"
OUTPUTS_DIR = "/tmp/outputs"
LABELS = {
    "app.kubernetes.io/name": "digitloop",
    "app.kubernetes.io/component": "loop",
    "app.kubernetes.io/part-of": "digitloop",
}
UID = 10001  # any non-root uid; the image's files only need to be world-readable


# -- what the release decides ---------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseValues:
    """Where the release's values go in both objects."""

    namespace: str
    image: str  # the app image every step runs: a pinned tag (the chart's schema checks it)
    pull_policy: str
    service_account: str  # the reading steps': reports outputs, reads what serves where
    rollout_service_account: str  # canary and analyse, the only steps that change the release
    config_map: str  # whose keys become the steps' environment
    secret: str  # whose keys become the steps' environment
    schedule: str  # five-field cron
    timezone: str  # IANA time zone of the schedule


# The Helm expression of each value, as the chart's templates evaluate it.
HELM = {
    "namespace": "$.Release.Namespace",
    "image": 'include "digitloop.image" (dict "root" $ "image" "app")',
    "pull_policy": "$.Values.images.app.pullPolicy",
    "service_account": 'include "digitloop.workflowServiceAccount" $',
    "rollout_service_account": 'include "digitloop.rolloutServiceAccount" $',
    "config_map": 'include "digitloop.configName" $',
    "secret": 'include "digitloop.secretsName" $',
    "schedule": "$.Values.workflow.schedule",
    "timezone": "$.Values.workflow.timezone",
}
# In the YAML Hera writes, a token holds the place of each (a plain scalar, which Hera and
# YAML leave alone); chart_template() turns it into the expression.
CHART_VALUES = ReleaseValues(**{name: f"__helm_{name}__" for name in HELM})
_TOKEN = re.compile(r"__helm_([a-z_]+?)__")
_TOKEN_VALUE = re.compile(r"""(?<=: |- )(['"]?)__helm_([a-z_]+?)__\1$""", re.MULTILINE)


def _is_token(value: str) -> bool:
    return _TOKEN.fullmatch(value) is not None


# -- the steps' pods ------------------------------------------------------------------------

SMALL = Resources(cpu_request="100m", cpu_limit=1, memory_request="512Mi", memory_limit="1Gi")
LARGE = Resources(cpu_request=1, cpu_limit=2, memory_request="2Gi", memory_limit="3Gi")


@dataclass(frozen=True)
class Pod:
    """How one step runs in its pod: what it gets and what metrics it shows. What it reads,
    writes and when it runs come from :mod:`pipelines.dag` and :mod:`pipelines.outputs`."""

    resources: Resources = field(default_factory=lambda: SMALL)
    deadline: int = 900  # seconds per attempt; helm upgrade --wait alone may take 5 min
    # Argo's controller emits these from the outputs when the step ends (prefixed
    # `argo_workflows_`); the step pods live too briefly to be scraped themselves.
    metrics: tuple[Gauge | Counter, ...] = ()
    # Changes the release (helm upgrade / the InferenceService): runs as the rollout account,
    # every other step as the reading one, which can touch nothing of the release.
    rolls_out: bool = False


def output_parameter(output: type[StepOutput], name: str) -> str:
    """A step's own output parameter in an expression of its template (a metric's value)."""
    if name not in output.argo_outputs():
        raise TypeError(f"{output.__name__}.{name} is not marked ArgoOutput")
    return f"{{{{outputs.parameters.{name}}}}}"


PODS: dict[str, Pod] = {
    "collect": Pod(),
    "quality": Pod(),
    "drift": Pod(
        metrics=(
            Gauge(
                name="digitloop_drift_score",
                help="Share of drifted features in the window of the loop's last drift check.",
                value=output_parameter(DriftOutput, "drift_score"),
                when="{{status}} == Succeeded",
                realtime=False,
            ),
        ),
    ),
    "decide": Pod(),
    "retrain": Pod(resources=LARGE, deadline=1800),
    "canary": Pod(rolls_out=True),
    "analyse": Pod(
        rolls_out=True,
        metrics=(
            Counter(
                name="digitloop_canary_decisions",
                help="Canary analyses by their outcome: promote, rollback or wait.",
                labels=[Label(key="action", value=output_parameter(AnalyseOutput, "action"))],
                value="1",
                when="{{status}} == Succeeded",
            ),
        ),
    ),
    # Lists and rewrites a few days of hourly files: memory follows one hour's data.
    "compact": Pod(),
}
FINISH_POD = Pod()  # the exit handler: summary, MLflow, webhook
STEP_OUTPUTS: dict[str, type[StepOutput]] = {**OUTPUTS, FINISH: Summary}

RETRY = RetryStrategy(
    limit=3,
    retry_policy="Always",  # failures and errors (an evicted or lost pod) alike
    # 10 s, 20 s, 40 s; no maxDuration: it counts from the first attempt's start, so one
    # long attempt (retrain, a helm upgrade --wait) would leave no retries at all.
    backoff=Backoff(duration="10s", factor=2),
)
LOCKED_DOWN = SecurityContext(
    run_as_non_root=True,
    run_as_user=UID,
    allow_privilege_escalation=False,
    read_only_root_filesystem=True,
    capabilities=Capabilities(drop=["ALL"]),
    seccomp_profile=SeccompProfile(type="RuntimeDefault"),
)


class _StepContainer(Container):
    """Hera's Container, letting a Helm token through as the pull policy: Hera checks the
    policy against its enum when it builds, and the chart's schema checks the real value."""

    def _build_image_pull_policy(self) -> str | None:
        if isinstance(self.image_pull_policy, str) and _is_token(self.image_pull_policy):
            return self.image_pull_policy
        return super()._build_image_pull_policy()


def _container(name: str, pod: Pod, values: ReleaseValues) -> Container:
    """The template of one step: the app image running ``digitloop loop step NAME``."""
    threads = str(pod.resources.cpu_limit)
    return _StepContainer(
        name=name,
        image=values.image,
        image_pull_policy=values.pull_policy,
        command=["digitloop"],
        args=["loop", "step", name, "--run-id", "{{workflow.name}}", "--outputs-dir", OUTPUTS_DIR],
        env=[
            # The root file system is read-only: caches (helm, matplotlib) and data go to /tmp.
            Env(name="HOME", value="/tmp"),
            Env(name=DigitloopSettings.env_name("data_dir"), value="/tmp/digitloop"),
            # torch would start a thread per node core and be throttled to the CPU limit.
            Env(name="OMP_NUM_THREADS", value=threads),
        ],
        env_from=[ConfigMapEnvFrom(name=values.config_map), SecretEnvFrom(name=values.secret)],
        outputs=[
            Parameter(
                name=output,
                value_from=ValueFrom(
                    path=f"{OUTPUTS_DIR}/{output}", default=argo_text(mark.default)
                ),
            )
            for output, mark in STEP_OUTPUTS[name].argo_outputs().items()
        ]
        or None,
        resources=pod.resources,
        metrics=list(pod.metrics) or None,
        retry_strategy=RETRY,
        active_deadline_seconds=pod.deadline,
        service_account_name=values.rollout_service_account if pod.rolls_out else None,
        security_context=LOCKED_DOWN,
        volume_mounts=[VolumeMount(name="tmp", mount_path="/tmp")],
    )


# -- the objects ----------------------------------------------------------------------------


def build_template(values: ReleaseValues) -> WorkflowTemplate:
    """The loop's DAG, for the cron and for manual runs (``argo submit --from ...``)."""
    with WorkflowTemplate(
        name=NAME,
        namespace=values.namespace,
        labels=LABELS,
        entrypoint="loop",
        on_exit=FINISH,
        service_account_name=values.service_account,
        # One run at a time, whoever started it: two runs could roll out at once otherwise.
        synchronization=Synchronization(mutexes=[Mutex(name=NAME)]),
        # A stuck run (an unschedulable pod, say) blocks the Forbid cron; an hour at most.
        active_deadline_seconds=3600,
        pod_gc=PodGC(strategy="OnPodSuccess", delete_delay_duration="10m"),
        ttl_strategy=TTLStrategy(seconds_after_success=24 * 3600, seconds_after_failure=72 * 3600),
        pod_metadata=Metadata(labels=LABELS),
        security_context=PodSecurityContext(
            run_as_non_root=True,
            run_as_user=UID,
            run_as_group=UID,
            fs_group=UID,
            seccomp_profile=SeccompProfile(type="RuntimeDefault"),
        ),
        volumes=[EmptyDirVolume(name="tmp", size_limit="2Gi")],
    ) as template:
        containers = {name: _container(name, pod, values) for name, pod in PODS.items()}
        _container(FINISH, FINISH_POD, values)
        with DAG(name="loop"):
            for name in ORDER:
                condition = WHEN[name]
                Task(
                    name=name,
                    template=containers[name],
                    # `.Succeeded`: a skipped upstream then omits this task instead of
                    # leaving its `when` reading outputs that were never written.
                    depends=" && ".join(f"{need}.Succeeded" for need in NEEDS[name]) or None,
                    when=condition.argo() if condition else None,
                )
    return template


def build_cron(values: ReleaseValues) -> CronWorkflow:
    """Runs the template on the schedule; a run still going when the next is due wins."""
    with CronWorkflow(
        name=NAME,
        namespace=values.namespace,
        labels=LABELS,
        schedules=[values.schedule],
        timezone=values.timezone,
        concurrency_policy="Forbid",
        starting_deadline_seconds=300,  # a tick missed by more than this is skipped
        successful_jobs_history_limit=3,
        failed_jobs_history_limit=5,
        workflow_template_ref=WorkflowTemplateRef(name=NAME),
    ) as cron:
        pass
    return cron


# -- the chart's templates ------------------------------------------------------------------

# Chart template file -> the object it holds.
FILES = {
    "workflow-workflowtemplate.yaml": build_template,
    "workflow-cronworkflow.yaml": build_cron,
}
HEADER = (
    "{{- /* Generated by `digitloop workflow render` from pipelines/workflows/loop.py: edit\n"
    "that, then run `make workflow`. Argo's own expressions are escaped from Helm. */}}\n"
)
_ARGO_EXPRESSION = re.compile(r"\{\{(.*?)\}\}")


def chart_template(manifest: str) -> str:
    """Hera's YAML of one object (built with :data:`CHART_VALUES`) as a chart template.

    Argo's ``{{...}}`` expressions are escaped as Helm raw strings, so Helm leaves them to
    Argo; each token becomes its Helm expression, quoted; the whole file renders only when
    ``workflow.enabled``.
    """
    escaped = _ARGO_EXPRESSION.sub(lambda m: "{{`{{" + m.group(1) + "}}`}}", manifest)
    templated = _TOKEN_VALUE.sub(lambda m: "{{ " + HELM[m.group(2)] + " | quote }}", escaped)
    if left := _TOKEN.search(templated):
        raise ValueError(f"{left.group()} is part of a longer value: use it as a whole value")
    return f"{HEADER}{{{{- if .Values.workflow.enabled }}}}\n{templated}{{{{- end }}}}\n"


def render() -> dict[str, str]:
    """Chart template file name -> its text; always the same bytes."""
    return {
        name: chart_template(build(CHART_VALUES).to_yaml(width=100))
        for name, build in FILES.items()
    }


__all__ = [
    "CHART_VALUES",
    "FILES",
    "NAME",
    "PODS",
    "ReleaseValues",
    "build_cron",
    "build_template",
    "render",
]
