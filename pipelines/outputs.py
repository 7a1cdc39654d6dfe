"""What each step of the loop hands on: one frozen model per step, stored as JSON.

The runners keep each output in the store as ``runs/<run_id>/<name>.json`` and hand it, typed,
to the steps that read it; :mod:`pipelines.dag` decides what runs next from their boolean
fields. A field marked :class:`ArgoOutput` is also an Argo output parameter: the Argo runner
writes it to a file, and :mod:`pipelines.workflows.loop` declares it, with the value Argo
takes when no file was written, from the same mark. So renaming a field is one edit, and a
condition or workflow that still names the old field fails at import.

Pydantic only, on purpose: rendering the workflow imports this, and must not load torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator


@dataclass(frozen=True)
class ArgoOutput:
    """Marks a field as an Argo output parameter of its step.

    ``default`` is what Argo reads when the pod wrote no file (it failed before writing, or
    an older image ran): for a flag a condition reads, the value that makes the DAG do nothing.
    """

    default: bool | None = None


def argo_text(value: object) -> str:
    """A value as Argo holds an output parameter: text, booleans lower-case (``when``
    compares them with ``true``/``false``), nothing for None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


class StepOutput(BaseModel):
    """What one step hands on; ``name`` is the step's, and the file it is stored in."""

    model_config = ConfigDict(frozen=True)

    name: ClassVar[str]

    @classmethod
    def argo_outputs(cls) -> dict[str, ArgoOutput]:
        """The fields marked as Argo output parameters, in declaration order."""
        return {
            field: mark
            for field, info in cls.model_fields.items()
            for mark in info.metadata
            if isinstance(mark, ArgoOutput)
        }

    def argo_values(self) -> dict[str, str]:
        """Each Argo output parameter's text, as the step's pod writes it."""
        return {field: argo_text(getattr(self, field)) for field in self.argo_outputs()}


# -- collect ------------------------------------------------------------------------------


class CollectCounts(BaseModel):
    """What the collected window holds."""

    model_config = ConfigDict(frozen=True)

    predictions: int = Field(ge=0, description="Predictions logged in the window.")
    feedback: int = Field(ge=0, description="Feedback records in the window.")
    joined: int = Field(ge=0, description="Feedback matched to its prediction.")
    pending: int = Field(ge=0, description="Feedback whose prediction is not logged yet.")
    orphaned: int = Field(ge=0, description="Feedback whose prediction never appeared.")


class CollectOutput(StepOutput):
    """The window of traffic since the champion's training, and what serves now."""

    name: ClassVar[str] = "collect"

    since: datetime
    until: datetime
    counts: CollectCounts
    stable_version: Annotated[str, ArgoOutput()]
    canary_version: Annotated[str | None, ArgoOutput()] = None
    canary_weight: int = Field(default=0, ge=0, le=100)
    canary_active: Annotated[bool, ArgoOutput(default=False)]


# -- quality ------------------------------------------------------------------------------


class LiveAccuracy(BaseModel):
    """Labelled predictions of one population: how many, and how many were right."""

    model_config = ConfigDict(frozen=True)

    n: int = Field(ge=0)
    correct: int = Field(ge=0)

    @model_validator(mode="after")
    def _at_most_n(self) -> LiveAccuracy:
        if self.correct > self.n:
            raise ValueError(f"correct must be within 0..n, got {self.correct} of {self.n}")
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None


class AnswerQuality(BaseModel):
    """How a group of answers fared: what people told of them, and what the model expects.

    People label some answers and not others, and many only correct wrong ones, so the
    accuracy over labelled answers alone can mislead; the corrected share of *all* answers
    is a floor on the error rate whoever labels, and ``estimated_accuracy`` needs no labels.
    """

    model_config = ConfigDict(frozen=True)

    answers: int = Field(ge=0, description="Answers served.")
    confirmed: int = Field(ge=0, description="Answers people confirmed.")
    corrected: int = Field(ge=0, description="Answers people corrected.")
    estimated_accuracy: float | None = Field(
        default=None,
        description="Label-free: the mean calibrated top probability of the answers (CBPE).",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def labelled(self) -> int:
        return self.confirmed + self.corrected

    @computed_field  # type: ignore[prop-decorator]
    @property
    def labelled_accuracy(self) -> float | None:
        """Right among labelled answers: biased when people correct more than they confirm."""
        return self.confirmed / self.labelled if self.labelled else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def corrected_share(self) -> float | None:
        """Corrections per answer: at least this share of the answers was wrong."""
        return self.corrected / self.answers if self.answers else None


class QualityOutput(StepOutput):
    """Live quality: overall, per track and version, per answered digit, per true digit."""

    name: ClassVar[str] = "quality"

    overall: AnswerQuality
    by_track: dict[str, AnswerQuality] = Field(description="Keyed `<track>:v<version>`.")
    by_answer: dict[int, AnswerQuality] = Field(
        description="The champion's own answers (stable track), keyed by the digit answered."
    )
    by_class: dict[int, LiveAccuracy] = Field(
        description="Labelled answers keyed by the true digit."
    )


# -- drift --------------------------------------------------------------------------------


class DriftOutput(StepOutput):
    """Evidently's verdict on the latest predictions against the champion's reference."""

    name: ClassVar[str] = "drift"

    drift_detected: Annotated[bool, ArgoOutput(default=False)]
    drift_score: Annotated[float, ArgoOutput()] = Field(description="Share of drifted columns.")
    drifted_columns: tuple[str, ...] = ()
    n_current: int = 0
    report: str | None = Field(default=None, description="Store key of the HTML report.")
    skipped: str | None = Field(default=None, description="Why no check ran, if none did.")
    # A champion fine-tuned on feedback is judged against mixes of MNIST and the traffic it
    # was adapted to (pipelines/drift/adapted.py); for one trained on MNIST only these stay unset.
    nearest_adapted_share: float | None = Field(
        default=None,
        description="Adapted traffic's share in the reference mix nearest the window (0: "
        "MNIST alone, 1: the adapted traffic alone); the verdict and report are against it.",
    )
    mnist_drift_score: float | None = Field(
        default=None, description="Share of drifted columns against MNIST alone."
    )
    mixture_scores: dict[float, float] = Field(
        default_factory=dict,
        description="Share of drifted columns against each mix, keyed by its adapted share.",
    )
    # drift_detected is any test's: Evidently's columns, the novelty or the geometry window test.
    evidently_drift_detected: bool | None = Field(
        default=None, description="Evidently's column tests alone."
    )
    novelty_detected: bool | None = Field(
        default=None,
        description="The novelty window test alone (more unusual drawings than the "
        "champion's calibrated share allows); unset for a champion without a scorer.",
    )
    novelty_flagged: int | None = Field(
        default=None, description="Drawings of the window flagged unusual."
    )
    novelty_share: float | None = Field(
        default=None, description="The champion's calibrated flagged share: the test's null."
    )
    novelty_p_value: float | None = Field(
        default=None, description="One-sided binomial p-value of the flagged count."
    )
    novelty_clusters: str | None = Field(
        default=None,
        description="Store key of a PNG of the flagged drawings in a few groups (KMeans on "
        "their embeddings), examples of each.",
    )
    geometry_detected: bool | None = Field(
        default=None,
        description="The geometry window test alone (more drawings of unusual stroke geometry "
        "than MNIST's calibrated share); unset for a champion fine-tuned on feedback.",
    )
    geometry_flagged: int | None = Field(
        default=None, description="Drawings of the window of unusual geometry."
    )
    geometry_share: float | None = Field(
        default=None, description="Held-out MNIST's flagged share at the threshold: the null."
    )
    geometry_threshold: float | None = Field(
        default=None, description="Squared Mahalanobis distance above which one is flagged."
    )
    geometry_p_value: float | None = Field(
        default=None, description="One-sided binomial p-value of the flagged count."
    )


# -- decide -------------------------------------------------------------------------------


class DecideOutput(StepOutput):
    """Whether to retrain, and why (DESIGN.md's rule)."""

    name: ClassVar[str] = "decide"

    retrain: Annotated[bool, ArgoOutput(default=False)]
    reasons: tuple[str, ...]


# -- retrain ------------------------------------------------------------------------------


class RetrainOutput(StepOutput):
    """The challenger registered from the champion and the feedback, and its gate."""

    name: ClassVar[str] = "retrain"

    challenger: Annotated[str, ArgoOutput()] = Field(description="Its registered version.")
    mlflow_run_id: str | None
    mnist_test_accuracy: Annotated[float, ArgoOutput()]
    holdout_accuracy: float | None = Field(description="None: no feedback was held out.")
    gate_passed: Annotated[bool, ArgoOutput(default=False)]
    gate_reasons: tuple[str, ...]
    train_samples: int = Field(ge=0, description="Feedback samples it was trained on.")
    pseudo_labelled: int = Field(
        default=0, ge=0, description="The champion's confident unlabelled answers trained on."
    )
    holdout_samples: int = Field(ge=0, description="Feedback samples the gate judged it on.")


# -- canary -------------------------------------------------------------------------------


class CanaryOutput(StepOutput):
    """The challenger now serving as the canary."""

    name: ClassVar[str] = "canary"

    canary: Annotated[str, ArgoOutput()] = Field(description="The canary's model version.")
    weight: Annotated[int, ArgoOutput()] = Field(ge=0, le=100, description="Percent of traffic.")


# -- analyse ------------------------------------------------------------------------------


class AnalyseOutput(StepOutput):
    """The canary judged on live evidence: promoted, rolled back, or left to gather more."""

    name: ClassVar[str] = "analyse"

    action: Annotated[Literal["wait", "promote", "rollback"], ArgoOutput()]
    reasons: tuple[str, ...]
    canary_version: str
    stable_version: str = Field(description="What stable serves after the action.")
    e_better: float | None = Field(default=None, description="Evidence it is better.")
    e_worse: float | None = Field(default=None, description="Evidence it is worse.")
    details: dict[str, float] = {}


# -- compact ------------------------------------------------------------------------------


class CompactOutput(StepOutput):
    """The store's upkeep: closed hours merged into one file each, and what retention removed."""

    name: ClassVar[str] = "compact"

    partitions: dict[str, int] = Field(default={}, description="Hours rewritten, per dataset.")
    files_in: dict[str, int] = Field(default={}, description="Files merged, per dataset.")
    rows: dict[str, int] = Field(default={}, description="Rows in the merged files.")
    legacy_files: int = Field(default=0, ge=0, description="Objects moved from date= folders.")
    expired: int = Field(default=0, ge=0, description="Objects deleted past retention.")


# -- the run ------------------------------------------------------------------------------


class RunOutputs(BaseModel):
    """The outputs of one run's steps, in the loop's order; None: the step did not run."""

    model_config = ConfigDict(frozen=True)

    collect: CollectOutput | None = None
    quality: QualityOutput | None = None
    drift: DriftOutput | None = None
    decide: DecideOutput | None = None
    retrain: RetrainOutput | None = None
    canary: CanaryOutput | None = None
    analyse: AnalyseOutput | None = None
    compact: CompactOutput | None = None

    def get(self, name: str) -> StepOutput | None:
        return getattr(self, name)

    def with_output(self, output: StepOutput) -> RunOutputs:
        return self.model_copy(update={output.name: output})

    @property
    def ran(self) -> tuple[str, ...]:
        """The steps that ran, in order."""
        return tuple(name for name in type(self).model_fields if self.get(name) is not None)


class Summary(StepOutput):
    """What one run did, for people, MLflow, the webhook and the workflow's outputs."""

    name: ClassVar[str] = "summary"

    run_id: str
    outcome: Annotated[str, ArgoOutput()]
    reasons: tuple[str, ...]
    drift_detected: bool | None = None
    drift_score: float | None = None
    live_accuracy: float | None = Field(default=None, description="Over labelled answers.")
    estimated_accuracy: float | None = Field(default=None, description="Label-free (CBPE).")
    labelled: int | None = None
    challenger: str | None = None
    canary: str | None = None
    mlflow_run_id: str | None = None
    steps: tuple[str, ...] = Field(description="The steps that ran, in order.")
    notified: bool | None = Field(default=None, description="The webhook took it (None: not yet).")
