"""The window: the predictions of a time range and the labelled examples of it.

Collect chooses the range; quality, drift, retrain and analyse read the same range again
(each Argo step in its own pod), which gives the same rows. Nothing is read before a step
asks for it, and each read lists only the hours of the range (:mod:`services.store.readers`):

- :attr:`Window.predictions`: the logged answers of the range, without their images (most
  of the bytes); :meth:`Window.images` fetches the images of the rows it is given;
- :attr:`Window.labelled`: from the labelled dataset that collect appends to
  (:mod:`pipelines.steps.labelling`), with images; nothing is joined again here;
- :meth:`Window.latest`: the newest answers with their images, reading back hour by hour;
- :attr:`Window.totals`: the running totals collect's counts and quality's figures come
  from (:mod:`pipelines.steps.totals`): the window's closed hours kept in the store, so a
  run reads the hours closed since the last run and the open tail, whatever the window's age.

Feedback can arrive before the prediction it labels is flushed to the predictions log
(pods buffer for a few seconds); such feedback is *pending* and joins in a later run.
Feedback whose prediction has not shown up within ``grace`` is *orphaned* and only counted.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cached_property

import numpy as np
import pandas as pd

from contracts.records import PREDICTIONS_SCHEMA
from pipelines.outputs import CollectCounts
from pipelines.settings import LoopSettings
from pipelines.steps.totals import WindowTotals, window_totals
from services.store.backends import ObjectStore
from services.store.readers import HOUR, read_labelled, read_predictions

GRACE = timedelta(minutes=10)
# The setting's default, for a window opened without the loop's settings (tests, benches).
TOTALS_SETTLE = timedelta(minutes=LoopSettings.model_fields["window_settle_minutes"].default)
# Everything but the image: what quality, analyse and the counts read of each answer.
ANSWER_COLUMNS = tuple(name for name in PREDICTIONS_SCHEMA.names if name != "image")


def stack_images(frame: pd.DataFrame) -> np.ndarray:
    """(N, 28, 28) uint8 images of a frame with an ``image`` column."""
    if frame.empty:
        return np.zeros((0, 28, 28), np.uint8)
    return np.stack(frame["image"].to_numpy()).reshape(-1, 28, 28).astype(np.uint8)


class Window:
    """The window ``[since, until)`` of a store, read lazily, each part at most once."""

    def __init__(
        self,
        store: ObjectStore,
        since: datetime,
        until: datetime,
        grace: timedelta = GRACE,
        settle: timedelta = TOTALS_SETTLE,
    ) -> None:
        self.store = store
        self.since = since
        self.until = until
        self.grace = grace
        self.settle = settle

    @cached_property
    def predictions(self) -> pd.DataFrame:
        """Logged answers with ``since <= ts < until``, oldest first, without ``image``."""
        return read_predictions(self.store, self.since, self.until, columns=ANSWER_COLUMNS)

    @cached_property
    def labelled(self) -> pd.DataFrame:
        """Predictions joined with their feedback, ``since <= feedback_ts < until``: the
        prediction's columns plus ``true_label``, ``feedback_ts`` and ``source``."""
        frame = read_labelled(self.store, self.since, self.until)
        return frame.astype({"true_label": int, "label": int})

    @cached_property
    def totals(self) -> WindowTotals:
        """The window's running totals, brought up to ``until`` (the stored state moves on:
        :func:`pipelines.steps.totals.window_totals`)."""
        return window_totals(self.store, self.since, self.until, self.settle, self.grace)

    @property
    def counts(self) -> CollectCounts:
        """What the window holds; feedback not joined is pending while younger than grace."""
        return self.totals.counts()

    def latest(self, n: int) -> pd.DataFrame:
        """The newest ``n`` answers of the window with their images, oldest first.

        Reads back from ``until`` an hour, then two, four...: the cost follows ``n``.
        """
        span = HOUR
        while True:
            start = max(self.since, self.until - span)
            frame = read_predictions(self.store, start, self.until)
            if len(frame) >= n or start <= self.since:
                break
            span *= 2
        return frame.tail(n).reset_index(drop=True)

    def images(self, frame: pd.DataFrame | None = None) -> np.ndarray:
        """(N, 28, 28) uint8 images of ``frame``'s rows (default: the window's answers), in
        its order; fetched from the log by id for a frame read without them."""
        frame = self.predictions if frame is None else frame
        if "image" in frame.columns or frame.empty:
            return stack_images(frame)
        first, last = frame["ts"].min().to_pydatetime(), frame["ts"].max().to_pydatetime()
        found = read_predictions(
            self.store, first, last + timedelta(milliseconds=1), ids=frame["prediction_id"]
        ).set_index("prediction_id")
        return stack_images(found.loc[frame["prediction_id"]])


def read_window(
    store: ObjectStore,
    since: datetime,
    until: datetime,
    grace: timedelta = GRACE,
    settle: timedelta = TOTALS_SETTLE,
) -> Window:
    """The window ``[since, until)`` of ``store`` (read lazily)."""
    return Window(store, since, until, grace, settle)
