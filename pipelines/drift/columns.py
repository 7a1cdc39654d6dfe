"""Evidently's per-column tests, called directly: the drift verdict without the report.

:func:`pipelines.drift.detect.check_drift` runs Evidently's ``DataDriftPreset``, whose report
(plots for every column) is nearly all of its few seconds a window. Where the drift step
has to compare one window with many references (the mixtures of
:func:`pipelines.drift.detect.detect_drift_adapted`) it scores them here, with the same
registered ``StatTest`` objects, methods and thresholds, then runs Evidently once for the
report of the one that decides. ``python -m digitloop_bench.drift adapted`` checks that
both give the same scores and verdicts (they agreed on every window it compared).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.drift.features import CLASS_COLUMN


@dataclass(frozen=True)
class ColumnVerdict:
    """One window against one reference: the share rule over the per-column tests."""

    drift_detected: bool
    drift_score: float  # share of drifted columns
    scores: np.ndarray  # each column's p-value (or distance), in column order
    drifted: np.ndarray  # each column's verdict


@dataclass(frozen=True)
class ColumnTests:
    """The drift step's tests for a fixed list of columns."""

    columns: tuple[str, ...]
    tests: tuple[Any, ...]  # Evidently StatTest objects
    kinds: tuple[Any, ...]  # Evidently ColumnType of each column
    thresholds: tuple[float, ...]
    drift_threshold: float

    @classmethod
    def of(
        cls, methods: Mapping[str, str], thresholds: Mapping[str, float], drift_threshold: float
    ) -> ColumnTests:
        """Tests by Evidently's method name and threshold, per column (in this order).

        :func:`pipelines.drift.detect.column_tests` gives the drift step's.
        """
        from evidently.legacy.calculations.stattests.registry import get_registered_stattest
        from evidently.legacy.core import ColumnType

        kinds = tuple(
            ColumnType.Categorical if column == CLASS_COLUMN else ColumnType.Numerical
            for column in methods
        )
        return cls(
            columns=tuple(methods),
            tests=tuple(
                get_registered_stattest(method, kind)
                for method, kind in zip(methods.values(), kinds, strict=True)
            ),
            kinds=kinds,
            thresholds=tuple(float(thresholds[column]) for column in methods),
            drift_threshold=drift_threshold,
        )

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """A feature frame as the (N, columns) float matrix :meth:`check` takes."""
        return frame[list(self.columns)].to_numpy(np.float64)

    def check(self, window: np.ndarray, reference: np.ndarray) -> ColumnVerdict:
        """One window's verdict; both are :meth:`matrix` outputs."""
        scores = np.empty(len(self.columns))
        drifted = np.empty(len(self.columns), bool)
        for j, (column, test, kind, threshold) in enumerate(
            zip(self.columns, self.tests, self.kinds, self.thresholds, strict=True)
        ):
            ref, cur = reference[:, j], window[:, j]
            if column == CLASS_COLUMN:  # Evidently's chi-squared counts the values of a Series
                ref, cur = pd.Series(ref.astype(np.int64)), pd.Series(cur.astype(np.int64))
            result = test(ref, cur, kind, threshold)
            scores[j], drifted[j] = result.drift_score, bool(result.drifted)
        share = float(drifted.mean())
        # Evidently's dataset test passes while "share < drift_share": drift is its failing.
        return ColumnVerdict(share >= self.drift_threshold, share, scores, drifted)
