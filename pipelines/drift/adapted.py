"""The adapted reference: the traffic a fine-tuned champion was adapted to.

After the loop fine-tunes the champion on a drifted population and promotes it, that
population is what the champion is for. Judged against MNIST alone it keeps drifting, and
the loop retrains again for nothing (measured before this: the next run scored 0.80,
trained v3, and v3 failed its gate). So a champion with feedback in its training data is
also judged against a sample of that traffic, and against mixes of it with MNIST
(:func:`mixture`; the rule is :func:`pipelines.drift.detect.detect_drift_adapted`).

Which traffic: the most recent ``drift_adapted_reference_size`` predictions logged from the
start of the feedback it was trained on (its registry tags ``feedback_since`` and
``feedback_until``) until the first window it is checked on, preferring those it was not
trained on: the traffic it served as a canary, then the feedback held out for its gate and
the unlabelled answers of its training range. The canary's traffic comes first because the
training range also holds the traffic from before the drift: a reference of its newest 400
answers held about 10 % MNIST drawings in the simulator, and the first 400 drawings after
the promotion drifted against every mix (2 simulator runs of 2; the canary's own traffic
is the population it was promoted on). The reference is built once, when the version is
first checked as the champion. A network is more confident on images it was trained on
than on fresh drawings of the same population, the reason :mod:`pipelines.drift.reference`
uses MNIST test and not train. After the retrain step's fine-tune (3 epochs, with
augmentation) the difference did not show: with a reference of the 300 drawings trained on,
2 of 100 fresh 400-drawing windows drifted against it, against 1 of 100 with unseen ones
(5 and 5 of 100 at 200; ``python -m digitloop_bench.drift adapted``). So the images trained
on fill up a range where nearly every answer was labelled, rather than leave the champion
with MNIST alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from model.registry import ModelVersionInfo


@dataclass(frozen=True)
class TrainingRange:
    """The feedback a version was fine-tuned on, from its ``training_data`` tag."""

    since: datetime  # the oldest feedback used
    until: datetime  # the newest feedback used
    trained: int  # how many labelled images it was trained on: the oldest of the range

    @property
    def source(self) -> str:
        """What an adapted reference built from this range says it was drawn from."""
        return f"traffic {self.since.isoformat()} .. {self.until.isoformat()}"

    @property
    def end(self) -> datetime:
        """The exclusive end of the range as a window reads it (``until`` is included)."""
        return self.until + timedelta(microseconds=1)


def training_range(info: ModelVersionInfo) -> TrainingRange | None:
    """The feedback range a version was trained on; None for one trained on MNIST only."""
    data = json.loads(info.tags.get("training_data") or "{}")
    since, until = data.get("feedback_since"), data.get("feedback_until")
    if not since or not until:
        return None
    return TrainingRange(
        since=datetime.fromisoformat(since),
        until=datetime.fromisoformat(until),
        trained=int(data.get("feedback") or 0),
    )


def adapted_rows(
    predictions: pd.DataFrame,
    labelled: pd.DataFrame,
    trained: TrainingRange,
    size: int,
    before: datetime | None = None,
) -> pd.DataFrame:
    """The newest ``size`` predictions logged before ``before`` (default: the range's end),
    those it was not trained on first.

    ``predictions`` and ``labelled`` are a window's (:class:`pipelines.steps.window.Window`)
    from the range's start. The images trained on are the oldest ``trained`` labelled ones by
    feedback time, as the retrain step splits them (the newer ones were held out for its
    gate); they only fill up what the rest leaves short, newest first, so a range where
    every answer was labelled still gives a reference. Returned oldest first.
    """
    trained_ids = (
        labelled.sort_values("feedback_ts", kind="stable")
        .head(trained.trained)["prediction_id"]
        .to_numpy()
    )
    in_range = predictions[predictions["ts"] < pd.Timestamp(before or trained.end)]
    in_range = in_range.sort_values("ts", kind="stable")
    seen = in_range["prediction_id"].isin(trained_ids)
    fresh = in_range[~seen].tail(size)
    filler = in_range[seen].tail(size - len(fresh))
    return pd.concat([filler, fresh]).sort_values("ts", kind="stable")


def mixture(
    mnist: pd.DataFrame, adapted: pd.DataFrame, share: float, seed: int = 0
) -> pd.DataFrame:
    """Rows of both references, ``share`` of them adapted: as many as that share allows.

    Rows are drawn at random with ``seed`` (the MNIST reference is in MNIST's order, whose
    halves come from different writers). ``share`` 0 is the MNIST rows, 1 the adapted ones.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    rng = np.random.default_rng(seed)
    n = min(
        len(mnist) / (1.0 - share) if share < 1.0 else np.inf,
        len(adapted) / share if share > 0.0 else np.inf,
    )
    n_adapted = round(share * n)
    rows_mnist = rng.permutation(len(mnist))[: round(n) - n_adapted]
    rows_adapted = rng.permutation(len(adapted))[:n_adapted]
    return pd.concat([mnist.iloc[rows_mnist], adapted.iloc[rows_adapted]]).reset_index(drop=True)


def mixture_grid(steps: int) -> tuple[float, ...]:
    """Adapted shares from 0 to 1 in ``steps`` equal steps: 1 step is the two ends only."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return tuple(round(i / steps, 6) for i in range(steps + 1))


def adapted_reference_path(data_dir: Path, model_name: str, version: str) -> Path:
    """Where a version's adapted reference is cached, beside its MNIST reference."""
    return data_dir / "references" / f"{model_name}-v{version}-adapted.npz"


TrafficReader = Callable[[TrainingRange, int], np.ndarray]
"""Reads the (N, 28, 28) uint8 images of :func:`adapted_rows` for a range and a size (up to
the window being checked)."""
