"""The loop's DAG as data: steps in order, what each reads, when each runs.

The single description both runners use: :mod:`pipelines.runners.local` runs it in-process,
:mod:`pipelines.runners.argo` runs one step of it per pod, and :mod:`pipelines.workflows.loop`
renders it as Argo's DAG (``depends`` and ``when``). Everything here is typed by the steps'
outputs (:mod:`pipelines.outputs`): a condition names a field of a model, checked when this
module is imported. No heavy imports, so rendering the workflow does not load torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.outputs import (
    AnalyseOutput,
    CanaryOutput,
    CollectOutput,
    CompactOutput,
    DecideOutput,
    DriftOutput,
    QualityOutput,
    RetrainOutput,
    RunOutputs,
    StepOutput,
)


@dataclass(frozen=True)
class When:
    """Run only when the flag ``field`` of the step that outputs ``output`` equals ``value``.

    The flag must be an Argo output parameter: Argo evaluates the same condition as a
    ``when`` expression on it. An output that is missing reads as the flag's Argo default.
    """

    output: type[StepOutput]
    field: str
    value: bool

    def __post_init__(self) -> None:
        marks = self.output.argo_outputs()
        if self.field not in marks:
            raise TypeError(
                f"{self.output.__name__}.{self.field} is not a field marked ArgoOutput, "
                f"so no condition can read it (marked: {', '.join(marks) or 'none'})"
            )
        if self.output.model_fields[self.field].annotation is not bool:
            raise TypeError(f"{self.output.__name__}.{self.field} is not a bool flag")
        if not isinstance(marks[self.field].default, bool):
            raise TypeError(f"{self.output.__name__}.{self.field} needs a bool Argo default")

    @property
    def step(self) -> str:
        return self.output.name

    def holds(self, outputs: RunOutputs) -> bool:
        upstream = outputs.get(self.step)
        flag = (
            getattr(upstream, self.field)
            if upstream is not None
            else self.output.argo_outputs()[self.field].default
        )
        return flag == self.value

    def argo(self) -> str:
        """The same condition as Argo's ``when`` expression on the step's output parameter."""
        return (
            f"{{{{tasks.{self.step}.outputs.parameters.{self.field}}}}} == "
            f"{'true' if self.value else 'false'}"
        )


OUTPUTS: dict[str, type[StepOutput]] = {
    output.name: output
    for output in (
        CollectOutput,
        QualityOutput,
        DriftOutput,
        DecideOutput,
        RetrainOutput,
        CanaryOutput,
        AnalyseOutput,
        CompactOutput,
    )
}
ORDER = tuple(OUTPUTS)
FINISH = "finish"  # the exit handler: summary in the store and MLflow, the webhook
STEP_NAMES = (*ORDER, FINISH)

# The outputs each step function takes, as keyword arguments named after their steps.
READS: dict[str, tuple[type[StepOutput], ...]] = {
    "collect": (),
    "quality": (CollectOutput,),
    "drift": (CollectOutput,),
    "decide": (CollectOutput, QualityOutput, DriftOutput),
    "retrain": (CollectOutput,),
    "canary": (RetrainOutput,),
    "analyse": (CollectOutput,),
    # The store's upkeep: it reads nothing of the run, so on Argo it runs beside the others,
    # retried on its own, and a failure of it decides nothing of the loop's.
    "compact": (),
}

NO_CANARY = When(CollectOutput, "canary_active", False)
WHEN: dict[str, When | None] = {
    "collect": None,
    "quality": None,
    "drift": NO_CANARY,  # a canary being judged: no retraining on top of it
    "decide": NO_CANARY,
    "retrain": When(DecideOutput, "retrain", True),
    "canary": When(RetrainOutput, "gate_passed", True),
    "analyse": When(CollectOutput, "canary_active", True),
    "compact": None,
}


def _needs(step: str) -> tuple[str, ...]:
    """The steps whose success ``step`` waits for: those it reads and its condition reads."""
    condition = WHEN[step]
    wanted = {output.name for output in READS[step]} | ({condition.step} if condition else set())
    return tuple(name for name in ORDER if name in wanted)


NEEDS: dict[str, tuple[str, ...]] = {step: _needs(step) for step in ORDER}


def should_run(step: str, outputs: RunOutputs) -> bool:
    condition = WHEN[step]
    return condition is None or condition.holds(outputs)
