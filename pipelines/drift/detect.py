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

Why these thresholds, measured with ``python -m digitloop_bench.drift`` (quick 2-epoch
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
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field
from torch import nn

from contracts.errors import DatasetError
from contracts.settings import DigitloopEnv
from model.registry import ModelVersionInfo
from pipelines.drift.features import CLASS_COLUMN, featurise
from pipelines.drift.reference import (
    Reference,
    ReferenceSpec,
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

    def reference_spec(self) -> ReferenceSpec:
        return ReferenceSpec(
            size=self.drift_reference_size,
            seed=self.drift_reference_seed,
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
    if len(current) < settings.drift_window_min:
        raise WindowTooSmallError(
            f"the window holds {len(current)} images; a drift check needs at least "
            f"{settings.drift_window_min} (DIGITLOOP_DRIFT_WINDOW_MIN)"
        )
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
) -> DriftResult:
    """The drift step on (N, 28, 28) uint8 images as the service logs them."""
    settings = settings or DriftSettings()
    if len(images) < settings.drift_window_min:
        raise WindowTooSmallError(
            f"the window holds {len(images)} images; a drift check needs at least "
            f"{settings.drift_window_min} (DIGITLOOP_DRIFT_WINDOW_MIN)"
        )
    return check_drift(featurise(net, images, reference.summary), reference, settings)


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
