"""The window: the predictions of a time range, joined with their feedback.

Collect chooses the range; quality, drift, retrain and analyse read the same range again
(each Argo step in its own pod), which gives the same rows.

Feedback can arrive before the prediction it labels is flushed to the predictions log
(pods buffer for a few seconds); such feedback is *pending* and joins in a later run.
Feedback whose prediction never shows up within ``grace`` is *orphaned* and only counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from pipelines.outputs import CollectCounts
from services.store.backends import ObjectStore
from services.store.readers import read_feedback, read_predictions

# How far back a feedback record may point: predictions older than this are not read.
LOOKBACK = timedelta(days=7)
GRACE = timedelta(minutes=10)


@dataclass
class Window:
    since: datetime
    until: datetime
    predictions: pd.DataFrame  # logged predictions with since <= ts < until
    labelled: pd.DataFrame  # predictions joined with feedback: + true_label, feedback_ts
    counts: CollectCounts

    def images(self, frame: pd.DataFrame | None = None) -> np.ndarray:
        """(N, 28, 28) uint8 images of ``frame`` (default: the window's predictions)."""
        frame = self.predictions if frame is None else frame
        if frame.empty:
            return np.zeros((0, 28, 28), np.uint8)
        return np.stack(frame["image"].to_numpy()).reshape(-1, 28, 28).astype(np.uint8)


def join_feedback(
    predictions: pd.DataFrame, feedback: pd.DataFrame, now: datetime, grace: timedelta = GRACE
) -> tuple[pd.DataFrame, int, int]:
    """Join feedback to predictions by id; returns (labelled, pending, orphaned)."""
    feedback = feedback.rename(columns={"label": "true_label", "ts": "feedback_ts"})
    merged = feedback.merge(predictions, on="prediction_id", how="left", indicator=True)
    unmatched = merged[merged["_merge"] == "left_only"]
    young = unmatched["feedback_ts"] >= pd.Timestamp(now - grace)
    labelled = merged[merged["_merge"] == "both"].drop(columns="_merge").reset_index(drop=True)
    labelled["true_label"] = labelled["true_label"].astype(int)
    labelled["label"] = labelled["label"].astype(int)
    return labelled, int(young.sum()), int((~young).sum())


def read_window(
    store: ObjectStore, since: datetime, until: datetime | None = None, grace: timedelta = GRACE
) -> Window:
    """Read the window ``[since, until)`` from the store and join its feedback."""
    until = until or datetime.now(UTC)
    predictions = read_predictions(store, since=since - LOOKBACK)
    predictions = predictions[predictions["ts"] < pd.Timestamp(until)]
    feedback = read_feedback(store, since=since)
    feedback = feedback[feedback["ts"] < pd.Timestamp(until)]
    labelled, pending, orphaned = join_feedback(predictions, feedback, until, grace)
    in_window = predictions[predictions["ts"] >= pd.Timestamp(since)].reset_index(drop=True)
    counts = CollectCounts(
        predictions=len(in_window),
        feedback=len(feedback),
        joined=len(labelled),
        pending=pending,
        orphaned=orphaned,
    )
    return Window(since=since, until=until, predictions=in_window, labelled=labelled, counts=counts)
