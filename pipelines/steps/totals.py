"""Running totals of the champion's window, so a run reads what arrived since the last one.

Collect's counts and quality's figures are sums over the window ``[since, until)``: since
the champion's training cutoff, until now. A month-old champion's window is a month of
answers; read whole on every run, its cost grew with the champion's age. Measured with
``digitloop bench loop --json`` (1 answer a second, 5 % labelled; the figures of every case
are in :mod:`digitloop_bench.loop`): collect and quality took 50.8 s and a 3.9 GB peak for
a month-old champion in a local folder against 3.1 s for a day-old one, and 9,749 S3 calls
against 1,245; with these totals 0.5 s, about 640 MB, and 1,011 calls for both. Instead of
the rows, the store keeps the sums of the window's closed hours (:class:`WindowState`,
``loop-state/window.json``), and each run reads only

- the hours that closed since the last run: ``[closed, closes)`` with ``closes`` the start
  of the hour ``settle`` before ``until``; in a loop every 10 minutes, one hour in six runs;
- the open tail ``[closes, until)``, between ``settle`` and ``settle`` + 1 hour of traffic,
  read fresh by every run and never kept.

What the totals hold (:class:`Totals`): answers and the exact sum of their top probabilities
(:func:`model.calibration.top_probability_sum`) per ``served_by`` (``<track>:v<version>``)
and answered digit, labelled answers per ``served_by``, answered and true digit, feedback
records, and labelled rows. From them :meth:`WindowTotals.counts` and
:meth:`WindowTotals.quality` give exactly what a read of the whole window gives (the test
holds them to it, across a crash and a new champion): :class:`~pipelines.outputs.CollectCounts`
and :class:`~pipelines.outputs.QualityOutput`, the label-free estimate to the last bit.

Which hour a row belongs to, and so when it is counted:

- a prediction: the hour of its ``ts`` (its partition);
- feedback: the hour it reached the store (its key's partition, see
  :func:`contracts.records.feedback_key`), so feedback replayed from a spool long after it
  was given still counts, in the hour it arrives, if its ``ts`` is in the window;
- a labelled row: the hour of its ``feedback_ts`` (its partition in ``labelled/``).

What can be missed, exactly: a row written into an hour after that hour closed, i.e. more
than ``settle`` after the hour ended. That is a predictions file flushed that late (a pod
that could not reach the store, buffered, and flushed after the outage), or a labelled row
appended that late (feedback replayed from a spool, or feedback whose prediction was
flushed that late, both join only then). Such feedback still counts in ``feedback``, so it
shows as orphaned instead of joined. The totals then stay short of a full read until the
window restarts with the next champion. Nothing is counted twice: the writers store each
record once per prediction id (feedback through its per-id marker) and keep a prediction
in the partition of its ``ts``, and compaction moves rows within their partition. Rows that
retention deletes after their hour closed stay counted (a full read would drop them).

Crash-safe like the labelling watermark (:mod:`pipelines.steps.labelling`): a run's only
write is the state, last, after its reads; a run that dies before it leaves the state as it
was and the next run reads the same hours again. The state belongs to one window: a new
champion (another ``since``) starts it again from scratch, reading the champion's whole
window once, a day at a time. A run whose ``until`` is before the state's closed hours (an
old run retried) computes from scratch too and leaves the state alone.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd

from contracts.records import FEEDBACK_PREFIX, LABELLED_PREFIX, PREDICTIONS_PREFIX, as_utc
from model.calibration import mean_top_probability, top_probability_sum
from pipelines.outputs import AnswerQuality, CollectCounts, LiveAccuracy, QualityOutput
from services.store.backends import ObjectNotFound, ObjectStore
from services.store.readers import read_feedback_arrived, read_labelled, read_predictions

log = logging.getLogger(__name__)

WINDOW_STATE_KEY = "loop-state/window.json"
# A rebuild (a new champion) reads its closed hours a day at a time: its memory is a day's.
CHUNK = timedelta(days=1)
_ANSWER = ["track", "model_version", "label"]

Cell = tuple[str, int]  # served_by, answered digit
LabelCell = tuple[str, int, int]  # served_by, answered digit, true digit


def served_by(frame: pd.DataFrame) -> pd.Series:
    """``<track>:v<version>`` of each row."""
    return frame["track"].astype(str) + ":v" + frame["model_version"].astype(str)


@dataclass(frozen=True)
class Totals:
    """Sums over a part of the window; two parts add up to their union."""

    answers: Counter[Cell] = field(default_factory=Counter)
    top: Counter[Cell] = field(default_factory=Counter)  # exact sums of top probabilities
    labelled: Counter[LabelCell] = field(default_factory=Counter)  # answer in the window
    feedback: int = 0  # feedback records with ts in the window
    joined: int = 0  # labelled rows with feedback_ts in the window

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.answers + other.answers,
            self.top + other.top,
            self.labelled + other.labelled,
            self.feedback + other.feedback,
            self.joined + other.joined,
        )

    @classmethod
    def of(
        cls,
        predictions: pd.DataFrame,
        labelled: pd.DataFrame,
        feedback: pd.DataFrame,
        since: datetime,
        until: datetime,
    ) -> Totals:
        """The sums of one part: its ``predictions`` (in the window by their ``ts``),
        ``labelled`` rows and ``feedback`` records (any ``ts``: filtered here)."""
        answers: Counter[Cell] = Counter()
        top: Counter[Cell] = Counter()
        if len(predictions):
            probabilities = np.stack(predictions["probabilities"].to_numpy())
            keys = pd.DataFrame(
                {"by": served_by(predictions).to_numpy(), "label": predictions["label"].to_numpy()}
            )
            for (by, label), rows in keys.groupby(["by", "label"], sort=False).indices.items():
                answers[by, int(label)] = len(rows)
                top[by, int(label)] = top_probability_sum(probabilities[rows])
        # Feedback of the window may label an older answer: it counts where its answer does.
        ts = labelled["ts"]
        in_window = labelled[(ts >= pd.Timestamp(since)) & (ts < pd.Timestamp(until))]
        cells = pd.DataFrame(
            {
                "by": served_by(in_window),
                "label": in_window["label"].astype(int),
                "true": in_window["true_label"].astype(int),
            }
        )
        labels: Counter[LabelCell] = Counter(
            {
                (by, int(label), int(true)): int(n)
                for (by, label, true), n in cells.value_counts(sort=False).items()
            }
        )
        in_time = (feedback["ts"] >= pd.Timestamp(since)) & (feedback["ts"] < pd.Timestamp(until))
        return cls(answers, top, labels, int(in_time.sum()), len(labelled))

    def to_json(self) -> dict:
        return {
            # The exact sums are integers of some 1,100 bits: hexadecimal text.
            "answers": [[by, label, n, f"{self.top[by, label]:x}"]
                        for (by, label), n in sorted(self.answers.items())],
            "labelled": [[*cell, n] for cell, n in sorted(self.labelled.items())],
            "feedback": self.feedback,
            "joined": self.joined,
        }  # fmt: skip

    @classmethod
    def from_json(cls, body: dict) -> Totals:
        answers: Counter[Cell] = Counter()
        top: Counter[Cell] = Counter()
        for by, label, n, total in body["answers"]:
            answers[by, label], top[by, label] = n, int(total, 16)
        labels = Counter({(by, label, true): n for by, label, true, n in body["labelled"]})
        return cls(answers, top, labels, body["feedback"], body["joined"])


@dataclass(frozen=True)
class WindowState:
    """The totals of ``[since, closed)``, the window's hours closed so far."""

    since: datetime
    closed: datetime
    totals: Totals

    def to_json(self) -> bytes:
        body = {
            "since": self.since.isoformat(),
            "closed": self.closed.isoformat(),
            "totals": self.totals.to_json(),
        }
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> WindowState:
        body = json.loads(data)
        return cls(
            datetime.fromisoformat(body["since"]),
            datetime.fromisoformat(body["closed"]),
            Totals.from_json(body["totals"]),
        )


def load_state(store: ObjectStore) -> WindowState | None:
    try:
        return WindowState.from_json(store.get(WINDOW_STATE_KEY))
    except ObjectNotFound:
        return None


@dataclass(frozen=True)
class WindowTotals:
    """The window's totals, and its feedback still pending (young and not joined)."""

    totals: Totals
    pending: int

    def counts(self) -> CollectCounts:
        """What :attr:`pipelines.steps.window.Window.counts` gives by a full read."""
        t = self.totals
        # Every labelled row of the window has its feedback in the window (it was joined
        # from it), so the feedback not joined is the difference. Should one not (its
        # feedback deleted by retention while the row was kept), never count below zero.
        joined = min(t.joined, t.feedback)
        pending = min(self.pending, t.feedback - joined)
        return CollectCounts(
            predictions=sum(t.answers.values()),
            feedback=t.feedback,
            joined=joined,
            pending=pending,
            orphaned=t.feedback - joined - pending,
        )

    def quality(self, champion: str) -> QualityOutput:
        """Quality of the window (:mod:`pipelines.steps.quality`); ``champion`` is the
        stable version, whose own answers alone are broken down by digit."""
        t = self.totals

        def group(cells: list[Cell]) -> AnswerQuality:
            answers = sum(t.answers[c] for c in cells)
            wanted = set(cells)
            right = wrong = 0
            for (by, label, true), n in t.labelled.items():
                if (by, label) in wanted:
                    right, wrong = (right + n, wrong) if label == true else (right, wrong + n)
            return AnswerQuality(
                answers=answers,
                confirmed=right,
                corrected=wrong,
                estimated_accuracy=(
                    mean_top_probability(sum(t.top[c] for c in cells), answers) if answers else None
                ),
            )

        # Only groups that served answers, as a full read's group-by gives them.
        cells = sorted(c for c, n in t.answers.items() if n)
        tracks = sorted({by for by, _ in cells})
        champion_by = f"stable:v{champion}"
        by_class: dict[int, LiveAccuracy] = {}
        for true in sorted({true for (_, _, true), n in t.labelled.items() if n}):
            n = sum(k for (_, _, tl), k in t.labelled.items() if tl == true)
            correct = sum(k for (_, label, tl), k in t.labelled.items() if tl == true == label)
            by_class[true] = LiveAccuracy(n=n, correct=correct)
        return QualityOutput(
            overall=group(cells),
            by_track={by: group([c for c in cells if c[0] == by]) for by in tracks},
            by_answer={label: group([(by, label)]) for by, label in cells if by == champion_by},
            by_class=by_class,
        )


def read_part(
    store: ObjectStore, since: datetime, until: datetime, start: datetime, end: datetime
) -> tuple[Totals, pd.DataFrame, pd.DataFrame]:
    """The totals of the hours ``[start, end)`` of the window ``[since, until)``, with the
    part's feedback and labelled ids (for the pending count)."""
    predictions = read_predictions(store, start, end, columns=[*_ANSWER, "probabilities"])
    labelled = read_labelled(store, start, end, columns=[*_ANSWER, "ts", "true_label"])
    # Feedback by the hour it arrived, whatever its ts: ts is filtered to the window.
    feedback = read_feedback_arrived(store, start, end)
    return Totals.of(predictions, labelled, feedback, since, until), feedback, labelled


def closed_parts(
    store: ObjectStore, start: datetime, closes: datetime
) -> list[tuple[datetime, datetime]]:
    """``[start, closes)`` in the parts a run reads it in: whole, when it is at most a day
    (every run but a new window's first); else one part per UTC day that holds any data
    (a window from the epoch spans 20,000 days, of which a few exist)."""
    if closes - start <= CHUNK:
        return [(start, closes)] if start < closes else []
    days = sorted(
        {
            date.fromisoformat(name.removeprefix("dt="))
            for prefix in (PREDICTIONS_PREFIX, FEEDBACK_PREFIX, LABELLED_PREFIX)
            for name in store.list_dirs(prefix)
            if name.startswith("dt=")
        }
    )
    parts = []
    for day in days:
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        part = (max(start, midnight), min(closes, midnight + CHUNK))
        if part[0] < part[1]:
            parts.append(part)
    return parts


def closing_hour(since: datetime, until: datetime, settle: timedelta) -> datetime:
    """The end of the window's closed hours: the hour ``settle`` before ``until`` starts."""
    hour = (until - settle).replace(minute=0, second=0, microsecond=0)
    return max(since, hour)


def window_totals(
    store: ObjectStore,
    since: datetime,
    until: datetime,
    settle: timedelta,
    grace: timedelta,
) -> WindowTotals:
    """The totals of ``[since, until)``: the stored ones, the hours closed since, and the
    open tail; the state is then moved to the hours now closed (written last).

    Raises:
        ValueError: ``settle`` is shorter than ``grace`` (the pending feedback must be in the
            tail, where ids are at hand).
    """
    if settle < grace:
        raise ValueError(f"settle ({settle}) must be at least the grace ({grace})")
    since, until = as_utc(since, "since"), as_utc(until, "until")
    closes = closing_hour(since, until, settle)
    state = load_state(store)
    resume = state is not None and state.since == since and state.closed <= closes
    totals, start = (state.totals, state.closed) if resume and state else (Totals(), since)
    read_from = start
    for part_start, part_end in closed_parts(store, start, closes):
        totals = totals + read_part(store, since, until, part_start, part_end)[0]
    tail, feedback, labelled = read_part(store, since, until, closes, until)
    young = feedback[
        (feedback["ts"] >= pd.Timestamp(until - grace)) & (feedback["ts"] < pd.Timestamp(until))
    ]
    pending = int((~young["prediction_id"].isin(labelled["prediction_id"])).sum())
    ahead = state is not None and state.since == since and not resume
    if read_from < closes and not ahead:
        # Last: a crash before this leaves the state as it was, and the hours are read again.
        state = WindowState(since, closes, totals)
        store.put(WINDOW_STATE_KEY, state.to_json(), "application/json")
        log.info("window totals from %s closed up to %s (read from %s)", since, closes, read_from)
    return WindowTotals(totals + tail, pending)
