"""The loop on Argo: a WorkflowTemplate holding the DAG, and a CronWorkflow that runs it.

Each DAG task is one pod running ``digitloop loop step NAME`` (:mod:`pipelines.cli`)
in the app image; steps hand their outputs to each other through the store, and write the
scalars the DAG's ``when`` conditions need to ``/tmp/outputs/<key>`` (Argo output
parameters). The tasks, their dependencies and conditions come from :mod:`pipelines.dag`,
the same description the in-process runner follows.

A task depends on ``<need>.Succeeded`` for every step it reads, never on a bare name: a
bare name also counts Skipped, and a ``when`` on the outputs of a skipped task fails to
resolve (an error, or a workflow stuck requeueing: argo-workflows#14498, #15837). With
``.Succeeded`` such a task is Omitted instead, and nothing is left to resolve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
from pydantic import Field, field_validator

from contracts.settings import DigitloopEnv
from pipelines.dag import NEEDS, ORDER, WHEN

NAME = "digitloop-loop"
OUTPUTS_DIR = "/tmp/outputs"
FILES = {"template": "workflow-template.yaml", "cron": "cron-workflow.yaml"}
LABELS = {
    "app.kubernetes.io/name": "digitloop",
    "app.kubernetes.io/component": "loop",
    "app.kubernetes.io/part-of": "digitloop",
}
UID = 10001  # any non-root uid; the image's files only need to be world-readable


class WorkflowSettings(DigitloopEnv):
    """Where and how the loop runs on the cluster, read from ``DIGITLOOP_*`` variables."""

    image: str = Field(
        default="digitloop-app:0.1.0",
        description="The app image every step runs: a pinned tag or digest, never `latest`.",
    )
    namespace: str = Field(default="digitloop", description="Namespace of both objects.")
    schedule: str = Field(default="*/10 * * * *", description="Cron schedule of the loop.")
    timezone: str = Field(default="UTC", description="IANA time zone of the schedule.")
    service_account: str = Field(
        default="digitloop-workflow",
        description="Service account of the reading steps' pods: reports outputs, reads what "
        "serves where (the chart creates it and its RBAC).",
    )
    rollout_service_account: str = Field(
        default="digitloop-rollout",
        description="Service account of the steps that change the release (canary, analyse): "
        "the only one that may upgrade it.",
    )
    config_map: str = Field(
        default="digitloop-config", description="ConfigMap whose keys become the steps' env."
    )
    secret: str = Field(
        default="digitloop-secrets", description="Secret whose keys become the steps' env."
    )

    @field_validator("image")
    @classmethod
    def _pinned(cls, image: str) -> str:
        if "@sha256:" in image:
            return image
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if not tag or tag == "latest":
            raise ValueError(f"image {image!r} must carry a pinned tag or digest, not latest")
        return image

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str) -> str:
        if not (schedule.startswith("@") or len(schedule.split()) == 5):
            raise ValueError(f"schedule {schedule!r} is not a five-field cron expression")
        return schedule

    @field_validator("timezone")
    @classmethod
    def _zone(cls, timezone: str) -> str:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {timezone!r}") from exc
        return timezone


SMALL = Resources(cpu_request="100m", cpu_limit=1, memory_request="512Mi", memory_limit="1Gi")
LARGE = Resources(cpu_request=1, cpu_limit=2, memory_request="2Gi", memory_limit="3Gi")


@dataclass(frozen=True)
class Step:
    """One pod of the loop: what it shows and what it gets. What it reads and when it runs
    come from :mod:`pipelines.dag`, the description the in-process runner uses too."""

    outputs: dict[str, str] = field(default_factory=dict)  # key -> default if no file
    resources: Resources = field(default_factory=lambda: SMALL)
    deadline: int = 900  # seconds per attempt; helm upgrade --wait alone may take 5 min
    # Argo's controller emits these from the outputs when the step ends (prefixed
    # `argo_workflows_`); the step pods live too briefly to be scraped themselves.
    metrics: tuple[Gauge | Counter, ...] = ()
    # Changes the release (helm upgrade / the InferenceService): runs as the rollout account,
    # every other step as the reading one, which can touch nothing of the release.
    rolls_out: bool = False


# Every output a `when` reads defaults to "false": a missing file means "do nothing".
DAG_STEPS: dict[str, Step] = {
    "collect": Step(outputs={"canary_active": "false", "stable_version": "", "canary_version": ""}),
    "quality": Step(),
    "drift": Step(
        outputs={"drift_detected": "false", "drift_score": ""},
        metrics=(
            Gauge(
                name="digitloop_drift_score",
                help="Share of drifted features in the window of the loop's last drift check.",
                value="{{outputs.parameters.drift_score}}",
                when="{{status}} == Succeeded",
                realtime=False,
            ),
        ),
    ),
    "decide": Step(outputs={"retrain": "false"}),
    "retrain": Step(
        outputs={"gate_passed": "false", "challenger": "", "mnist_test_accuracy": ""},
        resources=LARGE,
        deadline=1800,
    ),
    "canary": Step(outputs={"canary": "", "weight": ""}, rolls_out=True),
    "analyse": Step(
        outputs={"action": ""},
        rolls_out=True,
        metrics=(
            Counter(
                name="digitloop_canary_decisions",
                help="Canary analyses by their outcome: promote, rollback or wait.",
                labels=[Label(key="action", value="{{outputs.parameters.action}}")],
                value="1",
                when="{{status}} == Succeeded",
            ),
        ),
    ),
}
FINISH = Step(outputs={"outcome": ""})  # the exit handler: summary, MLflow, webhook

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


def _container(name: str, step: Step, settings: WorkflowSettings) -> Container:
    """The template of one step: the app image running ``digitloop loop step NAME``."""
    threads = str(step.resources.cpu_limit)
    return Container(
        name=name,
        image=settings.image,
        image_pull_policy="IfNotPresent",
        command=["digitloop"],
        args=["loop", "step", name, "--run-id", "{{workflow.name}}", "--outputs-dir", OUTPUTS_DIR],
        env=[
            # The root file system is read-only: caches (helm, matplotlib) and data go to /tmp.
            Env(name="HOME", value="/tmp"),
            Env(name="DIGITLOOP_DATA_DIR", value="/tmp/digitloop"),
            # torch would start a thread per node core and be throttled to the CPU limit.
            Env(name="OMP_NUM_THREADS", value=threads),
        ],
        env_from=[ConfigMapEnvFrom(name=settings.config_map), SecretEnvFrom(name=settings.secret)],
        outputs=[
            Parameter(name=key, value_from=ValueFrom(path=f"{OUTPUTS_DIR}/{key}", default=default))
            for key, default in step.outputs.items()
        ]
        or None,
        resources=step.resources,
        metrics=list(step.metrics) or None,
        retry_strategy=RETRY,
        active_deadline_seconds=step.deadline,
        service_account_name=settings.rollout_service_account if step.rolls_out else None,
        security_context=LOCKED_DOWN,
        volume_mounts=[VolumeMount(name="tmp", mount_path="/tmp")],
    )


def build_template(settings: WorkflowSettings | None = None) -> WorkflowTemplate:
    """The loop's DAG, for the cron and for manual runs (``argo submit --from ...``)."""
    settings = settings or WorkflowSettings()
    with WorkflowTemplate(
        name=NAME,
        namespace=settings.namespace,
        labels=LABELS,
        entrypoint="loop",
        on_exit="finish",
        service_account_name=settings.service_account,
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
        containers = {name: _container(name, step, settings) for name, step in DAG_STEPS.items()}
        _container("finish", FINISH, settings)
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


def build_cron(settings: WorkflowSettings | None = None) -> CronWorkflow:
    """Runs the template on the schedule; a run still going when the next is due wins."""
    settings = settings or WorkflowSettings()
    with CronWorkflow(
        name=NAME,
        namespace=settings.namespace,
        labels=LABELS,
        schedules=[settings.schedule],
        timezone=settings.timezone,
        concurrency_policy="Forbid",
        starting_deadline_seconds=300,  # a tick missed by more than this is skipped
        successful_jobs_history_limit=3,
        failed_jobs_history_limit=5,
        workflow_template_ref=WorkflowTemplateRef(name=NAME),
    ) as cron:
        pass
    return cron


def render(settings: WorkflowSettings | None = None) -> dict[str, str]:
    """File name -> YAML of both objects; the same settings give the same bytes."""
    settings = settings or WorkflowSettings()
    header = "# Generated by `digitloop workflow render` from pipelines/workflows/loop.py.\n"
    return {
        FILES["template"]: header + build_template(settings).to_yaml(width=100),
        FILES["cron"]: header + build_cron(settings).to_yaml(width=100),
    }


__all__ = ["DAG_STEPS", "NAME", "WorkflowSettings", "build_cron", "build_template", "render"]
