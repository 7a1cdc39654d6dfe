"""The drift step: is a window of traffic still like the reference the model was built for?

Each feature column of :mod:`pipelines.drift.features` is compared between the window and the
reference with Evidently (``DataDriftPreset``), one statistical test per column: by
default Kolmogorov-Smirnov for numbers and chi-squared for the predicted class, a column
counting as drifted when its p-value falls below ``drift_column_threshold``. The window's
``drift_score`` is the share of drifted columns (Evidently's own dataset-drift share), and
drift is detected when it reaches ``drift_threshold``: Evidently's "share of drifted
columns < threshold" test failing is the verdict, so its HTML report and the pipeline's
decision never disagree.

Why tests and not Evidently's defaults: for a reference of more than 1,000 rows Evidently
picks a distance (normed Wasserstein, Jensen-Shannon) with a fixed 0.1 threshold that does
not depend on the window's size; on these features it flagged 9 of 100 unshifted 200-image
windows. A test's p-value accounts for the window's size.

Why these thresholds, measured with ``python -m digitloop_bench.drift calibrate`` (quick 2-epoch
models, 5,000 reference digits, the other 5,000 MNIST test digits for unshifted windows;
its sweep replays the recorded p-values for other thresholds):

- p < 0.005 in at least 2 of the 15 columns: 200-image windows of unshifted MNIST
  false-alarm on 2.0 % (6 of 300; 1.7 % and 1.5 % with another model and reference
  split), 400-image windows (the loop's ``drift_window``) on 4 %, and 98-100 % of the
  windows of every shifted population in :mod:`digitloop_bench.shifts` are detected.
- p < 0.01 caught nothing more and false-alarmed more (2.0-2.7 % at 200, 5 % at 400).
- DESIGN's first guess, p < 0.05 with a share >= 0.3 (5 of 15 columns), needs more columns
  than a thick marker or a shaky mouse moves (ink mass and stroke width, sometimes
  confidence and entropy): with one of two models it caught only 78 % and 80 % of those.

Columns come in correlated pairs (confidence/entropy, bbox width/aspect, ink mass/stroke
width), which is why two drifted columns false-alarm on about 2 % of windows rather than
the far smaller rate independent columns would give. Rerun the benchmark before changing a
default.

After a promotion. A champion fine-tuned on feedback is built for MNIST *and* the traffic it
was adapted to (:mod:`pipelines.drift.adapted`); against MNIST alone that traffic keeps
drifting and the loop retrains for nothing. :func:`detect_drift_adapted` judges its window
against MNIST, the adapted traffic and every mix of the two (``drift_mixture_steps``), and
calls it drifted only if it is drifted against all of them. Measured with
``python -m digitloop_bench.drift adapted`` (the 8-epoch champion fine-tuned on 300
seven-segment drawings plus MNIST as the retrain step does, a 400-drawing adapted
reference; detected / windows at 200 and 400 images):

=============================  =============  ==============  ==============
population                     MNIST alone    MNIST, adapted  every mix
=============================  =============  ==============  ==============
MNIST (false alarms)           11/300, 6/300  11/300, 6/300   5/300, 4/300
unseen seven-segment drawings  100/100 both   5/100, 1/100    4/100, 1/100
MNIST + 25 % seven-segment     25/50, 42/50   25/50, 42/50    0/50, 0/50
MNIST + 50 % seven-segment     50/50 both     50/50 both      0/50 both
typeset, thick, small shifted  50/50 each     50/50 each      50/50 each
=============================  =============  ==============  ==============

Both references alone ("MNIST, adapted") already stop the churn on the adapted population,
but not on traffic of both populations at once, which is what a site has while some users
draw the new way; the mixes do. Pooling MNIST's and the adapted images into one reference
alarmed on every adapted window (and on 61 of 300 MNIST windows at 400). The per-column
scores of :class:`~pipelines.drift.columns.ColumnTests` equalled Evidently's on every
window the benchmark checked both (14 of 14).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field
from torch import nn

from contracts.errors import DatasetError
from contracts.settings import DigitloopEnv
from model.network import ModelOutputs, model_outputs
from model.registry import ModelVersionInfo
from pipelines.drift.adapted import (
    TrafficReader,
    adapted_reference_path,
    mixture,
    mixture_grid,
    training_range,
)
from pipelines.drift.columns import ColumnTests
from pipelines.drift.features import CLASS_COLUMN, feature_frame
from pipelines.drift.reference import (
    Reference,
    ReferenceSpec,
    cached_reference,
    load_or_build_reference,
    reference_path,
)

log = logging.getLogger(__name__)


class WindowTooSmallError(DatasetError):
    """The window holds fewer images than a drift check needs (``drift_window_min``)."""


class DriftSettings(DigitloopEnv):
    """Thresholds and methods of the drift step, from ``DIGITLOOP_*`` environment variables.

    Calibrated on 200-image windows against a 5,000-image reference (see the module doc).
    """

    drift_threshold: float = Field(
        default=0.13,
        gt=0.0,
        le=1.0,
        description="Drift is detected when the share of drifted feature columns reaches "
        "this: 0.13 is at least 2 of the 15 default columns.",
    )
    drift_column_threshold: float = Field(
        default=0.005,
        gt=0.0,
        description="A column drifts when its test's p-value is below this (for a distance "
        "method: when its distance is at or above it).",
    )
    drift_num_method: str = Field(
        default="ks", description="Evidently method for numerical columns (ks: Kolmogorov-Smirnov)."
    )
    drift_cat_method: str = Field(
        default="chisquare", description="Evidently method for the categorical predicted class."
    )
    drift_per_column_method: dict[str, str] = Field(
        default_factory=dict,
        description='Per-column method overrides, JSON in the environment: {"entropy": "mannw"}.',
    )
    drift_per_column_threshold: dict[str, float] = Field(
        default_factory=dict, description="Per-column threshold overrides, JSON in the environment."
    )
    drift_window_min: int = Field(
        default=200,
        ge=10,
        description="Fewest images a window needs; smaller windows are not checked. The "
        "thresholds are calibrated at 200: on 100-image windows they caught only 57 % of "
        "shaky-mouse windows.",
    )
    drift_reference_size: int = Field(
        default=5000, ge=100, lt=10000, description="MNIST test digits in the reference."
    )
    drift_reference_seed: int = Field(
        default=0, description="Seed of the reference's random half of MNIST test."
    )
    drift_embedding_components: int = Field(
        default=4, ge=0, le=16, description="Principal components of the embedding compared."
    )
    drift_adapted_reference_size: int = Field(
        default=400,
        ge=0,
        description="A champion fine-tuned on feedback is also judged against this many of "
        "the newest predictions of its training range that it was not trained on (fewer "
        "than drift_window_min: MNIST alone); 0: every champion against MNIST alone.",
    )
    drift_mixture_steps: int = Field(
        default=10,
        ge=1,
        description="A fine-tuned champion's window drifts only if it drifts against MNIST, "
        "its adapted traffic and every mix of the two in this many equal steps (1: the two "
        "alone). Mixes let traffic of both populations at once pass.",
    )

    drift_novelty_alpha: float = Field(
        default=0.005,
        gt=0.0,
        lt=1.0,
        description="A window drifts when its share of unusual drawings is above the "
        "champion's calibrated share with a one-sided binomial p-value below this.",
    )
    drift_geometry_share: float = Field(
        default=0.05,
        gt=0.0,
        lt=0.5,
        description="Share of held-out MNIST digits the geometry scorer's threshold flags "
        "(pipelines.drift.geometry; fitted on the drift reference's half of MNIST test).",
    )
    drift_geometry_alpha: float = Field(
        default=0.005,
        gt=0.0,
        lt=1.0,
        description="A window drifts when its share of drawings of unusual stroke geometry is "
        "above the calibrated share with a one-sided binomial p-value below this. 0.005, not "
        "0.01: 400-image MNIST windows then false-alarmed on 8 of 300, not 9 (python -m "
        "digitloop_bench.drift novelty --window-size 400).",
    )

    def reference_spec(self) -> ReferenceSpec:
        return ReferenceSpec(
            size=self.drift_reference_size,
            seed=self.drift_reference_seed,
            n_components=self.drift_embedding_components,
        )

    def adapted_spec(self) -> ReferenceSpec:
        """The adapted reference's: the newest traffic, not a random draw (no seed)."""
        return ReferenceSpec(
            size=self.drift_adapted_reference_size,
            seed=0,
            n_components=self.drift_embedding_components,
        )


@dataclass(frozen=True)
class FeatureDrift:
    """One column's comparison."""

    column: str
    kind: str  # "numerical" or "categorical"
    method: str  # Evidently's method name: "ks", "chisquare", ...
    score: float  # the method's drift score: a p-value for a test, else a distance
    score_kind: str  # "p_value" or "distance"
    threshold: float
    drifted: bool
    reference_mean: float | None = None
    current_mean: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "method": self.method,
            "score": self.score,
            "score_kind": self.score_kind,
            "threshold": self.threshold,
            "drifted": self.drifted,
            "reference_mean": self.reference_mean,
            "current_mean": self.current_mean,
        }


@dataclass(frozen=True)
class DriftResult:
    """The drift step's verdict, per-column detail, and the Evidently report behind it."""

    drift_detected: bool
    drift_score: float
    threshold: float
    n_current: int
    n_reference: int
    features: dict[str, FeatureDrift]
    reference_model_version: str | None = None
    snapshot: Any = field(default=None, repr=False, compare=False)  # evidently Snapshot

    @property
    def drifted_columns(self) -> list[str]:
        return [name for name, f in self.features.items() if f.drifted]

    def as_dict(self) -> dict[str, object]:
        """The JSON contract: ``drift_detected``, ``drift_score``, ``features`` and context."""
        return {
            "drift_detected": self.drift_detected,
            "drift_score": self.drift_score,
            "threshold": self.threshold,
            "n_current": self.n_current,
            "n_reference": self.n_reference,
            "drifted_columns": self.drifted_columns,
            "reference_model_version": self.reference_model_version,
            "features": {name: f.as_dict() for name, f in self.features.items()},
        }

    def report_html(self) -> str:
        """Evidently's report as one standalone HTML page (large: it embeds its scripts)."""
        if self.snapshot is None:
            raise ValueError("this result carries no Evidently report")
        return self.snapshot.get_html_str(as_iframe=False)

    def report_json(self) -> str:
        """Our verdict and Evidently's metrics and tests, as one JSON document."""
        evidently = self.snapshot.dict() if self.snapshot is not None else None
        return json.dumps({"result": self.as_dict(), "evidently": evidently}, default=_jsonable)

    def report_files(self) -> dict[str, bytes]:
        """The report as files for the store and MLflow: ``drift_report.{html,json}``."""
        return {
            "drift_report.html": self.report_html().encode(),
            "drift_report.json": self.report_json().encode(),
        }


def combine(detected: Sequence[bool], scores: Sequence[float]) -> tuple[bool, float, int]:
    """The rule over several references: drifted only if drifted against every one.

    Returns the verdict, its score (the smallest share of drifted columns: the verdict is
    "score >= threshold" exactly as for one reference, since each reference's verdict is its
    share reaching the threshold) and the index of the nearest reference (smallest score,
    the first on ties), whose columns explain the verdict.

    Raises:
        ValueError: no references, or verdicts and scores of different lengths.
    """
    if not detected or len(detected) != len(scores):
        raise ValueError(f"need one verdict per score, got {len(detected)} and {len(scores)}")
    nearest = min(range(len(scores)), key=lambda i: scores[i])
    return all(detected), float(scores[nearest]), nearest


def model_reference(
    net: nn.Module,
    info: ModelVersionInfo,
    mnist_test: np.ndarray,
    data_dir: Path,
    settings: DriftSettings,
) -> Reference:
    """The reference of a registered version: cached per version in ``data_dir``, built once."""
    return load_or_build_reference(
        net,
        mnist_test,
        reference_path(data_dir, info.name, info.version),
        spec=settings.reference_spec(),
        model_version=info.version,
        model_run_id=info.run_id,
    )


def adapted_reference(
    net: nn.Module,
    info: ModelVersionInfo,
    mnist: Reference,
    traffic: TrafficReader,
    data_dir: Path,
    settings: DriftSettings,
) -> Reference | None:
    """The traffic a fine-tuned version was adapted to, as a reference; None if it has none.

    Featurised with ``mnist``'s embedding summary, so the two share their columns and mix
    (:func:`detect_drift_adapted`). Cached per version beside the MNIST reference; the store
    is read (``traffic``) only to build it. None for a version trained on MNIST only, when
    ``drift_adapted_reference_size`` is 0, or when its range holds fewer images than
    ``drift_window_min``.
    """
    trained = training_range(info)
    size = settings.drift_adapted_reference_size
    if trained is None or size == 0:
        return None
    spec = settings.adapted_spec()
    # The summary is part of the key: features in another summary's coordinates are wrong.
    source = f"{trained.source}; summary {mnist.summary.fingerprint()}"

    def build() -> Reference | None:
        images = traffic(trained, size)
        if len(images) < settings.drift_window_min:
            log.warning(
                "version %s: %d images of the traffic it was adapted to (%s), fewer than "
                "drift_window_min=%d; judging it against MNIST alone",
                info.version,
                len(images),
                trained.source,
                settings.drift_window_min,
            )
            return None
        features = feature_frame(images, model_outputs(net, images), mnist.summary)
        return Reference(features, mnist.summary, spec, info.version, info.run_id, source=source)

    return cached_reference(
        adapted_reference_path(data_dir, info.name, info.version),
        spec,
        info.version,
        info.run_id,
        source,
        build,
    )


def column_tests(columns: Sequence[str], settings: DriftSettings) -> ColumnTests:
    """The per-column tests :func:`check_drift` runs, to call without Evidently's report."""
    methods, thresholds = {}, {}
    for column in columns:
        default = settings.drift_cat_method if column == CLASS_COLUMN else settings.drift_num_method
        methods[column] = settings.drift_per_column_method.get(column, default)
        thresholds[column] = settings.drift_per_column_threshold.get(
            column, settings.drift_column_threshold
        )
    return ColumnTests.of(methods, thresholds, settings.drift_threshold)


def check_drift(
    current: pd.DataFrame, reference: Reference, settings: DriftSettings | None = None
) -> DriftResult:
    """Compare a window's feature frame with the reference's, column by column.

    Raises:
        WindowTooSmallError: fewer than ``drift_window_min`` rows.
        DatasetError: the frame lacks some of the reference's columns.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    settings = settings or DriftSettings()
    _check_window(len(current), settings)
    columns = list(reference.features.columns)
    missing = [c for c in columns if c not in current.columns]
    if missing:
        raise DatasetError(f"the window lacks feature column(s) {', '.join(missing)}")
    numerical = [c for c in columns if c != CLASS_COLUMN]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=[CLASS_COLUMN])
    preset = DataDriftPreset(
        columns=columns,
        drift_share=settings.drift_threshold,
        num_method=settings.drift_num_method,
        cat_method=settings.drift_cat_method,
        per_column_method=settings.drift_per_column_method or None,
        threshold=settings.drift_column_threshold,
        per_column_threshold=settings.drift_per_column_threshold or None,
    )
    # Evidently's report correlates the columns for display; a column that is constant in a
    # window (bbox_height is 20 for most digits) makes numpy warn about 0/0 there.
    with np.errstate(invalid="ignore", divide="ignore"):
        snapshot = Report([preset], include_tests=True).run(
            Dataset.from_pandas(
                current[columns].reset_index(drop=True), data_definition=definition
            ),
            Dataset.from_pandas(reference.features[columns], data_definition=definition),
        )
    return _result(snapshot, current[columns], reference, settings)


def detect_drift(
    net: nn.Module,
    images: np.ndarray,
    reference: Reference,
    settings: DriftSettings | None = None,
    *,
    outputs: ModelOutputs | None = None,
) -> DriftResult:
    """The drift step on (N, 28, 28) uint8 images as the service logs them.

    ``outputs`` is ``net``'s forward pass of ``images`` when the caller has run it already
    (the drift step scores novelty with the same embeddings); run here when None.
    """
    settings = settings or DriftSettings()
    _check_window(len(images), settings)
    outputs = outputs if outputs is not None else model_outputs(net, images)
    return check_drift(feature_frame(images, outputs, reference.summary), reference, settings)


@dataclass(frozen=True)
class MixtureDrift:
    """A fine-tuned champion's window against MNIST, its adapted traffic and their mixes.

    ``result`` is Evidently's check against the nearest mix: the verdict and the report.
    ``mnist`` is the check against MNIST alone, what the window looks like to the champion's
    original reference. ``scores`` holds each mix's share of drifted columns (from
    :class:`~pipelines.drift.columns.ColumnTests`), keyed by its adapted share.
    """

    result: DriftResult
    mnist: DriftResult
    nearest_share: float
    scores: dict[float, float]

    @property
    def drift_detected(self) -> bool:
        return self.result.drift_detected

    @property
    def drift_score(self) -> float:
        return self.result.drift_score

    @property
    def drifted_columns(self) -> list[str]:
        return self.result.drifted_columns

    @property
    def n_current(self) -> int:
        return self.result.n_current

    def as_dict(self) -> dict[str, object]:
        return {
            **self.result.as_dict(),
            "nearest_adapted_share": self.nearest_share,
            "mixture_scores": {f"{share:g}": score for share, score in self.scores.items()},
            "mnist": self.mnist.as_dict(),
        }

    def report_files(self) -> dict[str, bytes]:
        """The nearest mix's report as ``drift_report.*``, MNIST's as ``drift_report_mnist.*``;
        the JSON of the first also holds every mix's score and the MNIST verdict."""
        evidently = self.result.snapshot.dict() if self.result.snapshot is not None else None
        document = {"result": self.as_dict(), "evidently": evidently}
        files = {
            "drift_report.html": self.result.report_html().encode(),
            "drift_report.json": json.dumps(document, default=_jsonable).encode(),
        }
        for name, data in self.mnist.report_files().items():
            files[name.replace("drift_report", "drift_report_mnist")] = data
        return files


def detect_drift_adapted(
    net: nn.Module,
    images: np.ndarray,
    mnist: Reference,
    adapted: Reference,
    settings: DriftSettings | None = None,
    *,
    outputs: ModelOutputs | None = None,
) -> MixtureDrift:
    """The drift step for a fine-tuned champion: drifted only if drifted against every mix.

    The mixes run from MNIST alone to the adapted traffic alone in ``drift_mixture_steps``
    steps; each is scored with the per-column tests, and Evidently then checks the window
    against the nearest one (smallest share of drifted columns, MNIST first on ties): the
    window is drifted exactly when it is drifted against that one, so against all
    (:func:`combine`). ``outputs``: as :func:`detect_drift`'s.
    """
    settings = settings or DriftSettings()
    _check_window(len(images), settings)
    outputs = outputs if outputs is not None else model_outputs(net, images)
    features = feature_frame(images, outputs, mnist.summary)
    tests = column_tests(list(mnist.features.columns), settings)
    window = tests.matrix(features)
    mixes = {
        share: mixture(mnist.features, adapted.features, share, settings.drift_reference_seed)
        for share in mixture_grid(settings.drift_mixture_steps)
    }
    verdicts = [tests.check(window, tests.matrix(rows)) for rows in mixes.values()]
    _, _, nearest = combine([v.drift_detected for v in verdicts], [v.drift_score for v in verdicts])
    share = list(mixes)[nearest]
    reference = dataclasses.replace(
        adapted, features=mixes[share], source=f"{adapted.source}; {share:.0%} adapted"
    )
    result = check_drift(features, reference, settings)
    plain = result if share == 0.0 else check_drift(features, mnist, settings)
    return MixtureDrift(
        result=result,
        mnist=plain,
        nearest_share=share,
        scores={s: v.drift_score for s, v in zip(mixes, verdicts, strict=True)},
    )


def _check_window(n: int, settings: DriftSettings) -> None:
    if n < settings.drift_window_min:
        raise WindowTooSmallError(
            f"the window holds {n} images; a drift check needs at least "
            f"{settings.drift_window_min} (DIGITLOOP_DRIFT_WINDOW_MIN)"
        )


def _result(
    snapshot: Any, current: pd.DataFrame, reference: Reference, settings: DriftSettings
) -> DriftResult:
    """Read our typed result out of Evidently's metrics and tests."""
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    report = snapshot.dict()
    status = {t["metric_config"]["metric_id"]: t["status"] for t in report["tests"]}
    share, share_failed = None, None
    features: dict[str, FeatureDrift] = {}
    for metric in report["metrics"]:
        config = metric["config"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "DriftedColumnsCount":
            share = float(metric["value"]["share"])
            share_failed = status.get(metric["id"]) == "FAIL"
        elif kind == "ValueDrift":
            column = config["column"]
            categorical = column == CLASS_COLUMN
            stattest = get_registered_stattest(
                config["method"], ColumnType.Categorical if categorical else ColumnType.Numerical
            )
            features[column] = FeatureDrift(
                column=column,
                kind="categorical" if categorical else "numerical",
                method=str(config["method"]),
                score=float(metric["value"]),
                score_kind="p_value" if "p_value" in stattest.display_name else "distance",
                threshold=float(config["threshold"]),
                drifted=status.get(metric["id"]) == "FAIL",
                reference_mean=None if categorical else float(reference.features[column].mean()),
                current_mean=None if categorical else float(current[column].mean()),
            )
    if share is None:
        raise RuntimeError("Evidently's report has no drifted-columns share")
    # Evidently's own test ("share < drift_threshold") failing is the verdict, so the HTML
    # report and the pipeline's decision always agree.
    detected = share_failed if share_failed is not None else share >= settings.drift_threshold
    return DriftResult(
        drift_detected=bool(detected),
        drift_score=share,
        threshold=settings.drift_threshold,
        n_current=len(current),
        n_reference=len(reference.features),
        features=features,
        reference_model_version=reference.model_version,
        snapshot=snapshot,
    )


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
