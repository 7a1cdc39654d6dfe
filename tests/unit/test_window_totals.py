"""The window's running totals give what a read of the whole window gives, run after run:
on a randomized history, across a crash before the state is written, and when a new
champion moves the window's start; and each run reads only the hours it has not counted."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contracts.records import FeedbackRecord, PredictionRecord, feedback_key, time_ordered_hex
from model.calibration import expected_accuracy
from pipelines.outputs import AnswerQuality, CollectCounts, LiveAccuracy, QualityOutput
from pipelines.steps import totals as totals_module
from pipelines.steps.labelling import advance
from pipelines.steps.totals import WINDOW_STATE_KEY, WindowState, load_state, window_totals
from pipelines.steps.window import ANSWER_COLUMNS, GRACE, read_window
from services.store.backends import LocalStore, StoreUnavailable
from services.store.readers import read_feedback, read_labelled, read_predictions
from services.store.writers import PredictionLog

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
RUN = timedelta(minutes=10)
TOTALS_SETTLE = timedelta(hours=1)
SERVED = [("stable", "1"), ("stable", "2"), ("canary", "3")]


# -- today's full read: the definition the totals must meet ---------------------------------


def full_counts(store, since: datetime, until: datetime) -> CollectCounts:
    """Collect's counts as a read of the whole window gave them before the totals."""
    predictions = read_predictions(store, since, until, columns=ANSWER_COLUMNS)
    feedback = read_feedback(store, since, until)
    labelled = read_labelled(store, since, until, columns=["prediction_id"])
    joined = feedback["prediction_id"].isin(labelled["prediction_id"])
    young = feedback[~joined]["ts"] >= pd.Timestamp(until - GRACE)
    return CollectCounts(
        predictions=len(predictions),
        feedback=len(feedback),
        joined=int(joined.sum()),
        pending=int(young.sum()),
        orphaned=int((~young).sum()),
    )


def _answer_quality(answers: pd.DataFrame, labelled: pd.DataFrame) -> AnswerQuality:
    right = labelled["label"] == labelled["true_label"]
    probabilities = np.stack(answers["probabilities"].to_numpy()) if len(answers) else None
    return AnswerQuality(
        answers=len(answers),
        confirmed=int(right.sum()),
        corrected=int((~right).sum()),
        estimated_accuracy=expected_accuracy(probabilities) if len(answers) else None,
    )


def full_quality(store, since: datetime, until: datetime, champion: str) -> QualityOutput:
    """Quality as a read of the whole window gave it before the totals."""

    def keyed(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame["served_by"] = frame["track"].astype(str) + ":v" + frame["model_version"].astype(str)
        frame["label"] = frame["label"].astype(int)
        return frame

    predictions = keyed(read_predictions(store, since, until, columns=ANSWER_COLUMNS))
    labelled = read_labelled(store, since, until).astype({"true_label": int, "label": int})
    labelled = keyed(labelled[labelled["prediction_id"].isin(predictions["prediction_id"])])

    def grouped(key: str, answers: pd.DataFrame = predictions) -> dict:
        return {
            value: _answer_quality(
                group, labelled[labelled["prediction_id"].isin(group["prediction_id"])]
            )
            for value, group in answers.groupby(key, sort=True)
        }

    champion_answers = predictions[predictions["served_by"] == f"stable:v{champion}"]
    return QualityOutput(
        overall=_answer_quality(predictions, labelled),
        by_track=grouped("served_by"),
        by_answer={int(k): v for k, v in grouped("label", champion_answers).items()},
        by_class={
            int(digit): LiveAccuracy(n=len(group), correct=int((group["label"] == digit).sum()))
            for digit, group in labelled.groupby("true_label", sort=True)
        },
    )


# -- a randomized history, written as it would reach the store ------------------------------


@dataclass(frozen=True)
class Write:
    """Something that reaches the store at ``at``."""

    at: datetime
    predictions: tuple[PredictionRecord, ...] = ()
    feedback: FeedbackRecord | None = None


def history(seed: int, hours: int) -> list[Write]:
    """About 40 answers an hour from three versions, a third labelled minutes later; some
    files flushed up to 20 minutes late or written twice, some feedback replayed from a
    spool up to 30 minutes late, some for a prediction that is never logged, and answers
    from before the window labelled inside it."""
    rng = np.random.default_rng(seed)
    writes: list[Write] = []
    t = START - timedelta(hours=2)
    end = START + timedelta(hours=hours)
    i = 0
    while t < end:
        t += timedelta(seconds=float(rng.exponential(90)))
        i += 1
        track, version = SERVED[rng.integers(len(SERVED))]
        pid = f"{time_ordered_hex(t, i)}.{track}.{version}.0.{seed:04d}{i:012d}"
        probabilities = rng.dirichlet(np.full(10, rng.uniform(0.05, 1))).astype(np.float32)
        answer = int(probabilities.argmax())
        record = PredictionRecord(
            pid, t, version, track, np.zeros((28, 28), np.uint8), probabilities, answer, 1.0
        )
        lost = rng.random() < 0.05  # the feedback's prediction never reaches the log
        if not lost:
            flushed = t + timedelta(seconds=float(rng.choice([3, 3, 3, 600, 1200])))
            writes.append(Write(flushed, (record,)))
            if rng.random() < 0.05:  # at-least-once: the same record in a second file
                writes.append(Write(flushed + timedelta(seconds=5), (record,)))
        if rng.random() < 0.35:
            given = t + timedelta(seconds=float(rng.uniform(2, 600)))
            truth = answer if rng.random() < 0.7 else int(rng.integers(10))
            arrives = given + timedelta(seconds=float(rng.choice([0, 0, 0, 900, 1800])))
            writes.append(Write(arrives, feedback=FeedbackRecord(pid, truth, given)))
    return sorted(writes, key=lambda w: w.at)


def write(store: LocalStore, writes: list[Write]) -> None:
    log = PredictionLog(store, "pod-a")
    for w in writes:
        for record in w.predictions:
            log.append(record)
        log.flush()
        if w.feedback is not None:
            # Keyed by the hour it arrives, as the service's writer and spool replay key it.
            store.put(feedback_key(w.feedback, w.at), w.feedback.to_json(), "application/json")


class CrashingStore(LocalStore):
    """Its next write of the window's state fails, as a pod killed before it would."""

    crash_next = False

    def put(self, key, data, content_type="application/octet-stream"):
        if key == WINDOW_STATE_KEY and self.crash_next:
            self.crash_next = False
            raise StoreUnavailable("the pod was killed")
        super().put(key, data, content_type)


@pytest.mark.parametrize("seed", [0, 1])
def test_running_totals_equal_a_full_read_run_after_run(tmp_path: Path, seed: int):
    store = CrashingStore(tmp_path / "store")
    writes = history(seed, hours=8)
    rng = np.random.default_rng(100 + seed)
    since, champion = START, "1"
    now, done = START, 0
    crashed = rebuilt = 0
    while now < START + timedelta(hours=8):
        now += RUN
        due = [w for w in writes[done:] if w.at < now]
        write(store, due)
        done += len(due)
        if now == START + timedelta(hours=5):
            # A new champion: its window starts at its training cutoff.
            since, champion = now - timedelta(minutes=37), "2"
            rebuilt += 1
        advance(store, now)
        if now.minute == 0 and rng.random() < 0.5:  # an hour closes: the state is written
            store.crash_next = True
            before = store.get(WINDOW_STATE_KEY) if store.exists(WINDOW_STATE_KEY) else None
            try:
                window_totals(store, since, now, TOTALS_SETTLE, GRACE)
            except StoreUnavailable:
                crashed += 1
            after = store.get(WINDOW_STATE_KEY) if store.exists(WINDOW_STATE_KEY) else None
            assert after == before  # nothing written: the next run reads the same hours
            store.crash_next = False
        window = read_window(store, since, now, settle=TOTALS_SETTLE)
        assert window.counts == full_counts(store, since, now), now
        assert window.totals.quality(champion) == full_quality(store, since, now, champion), now
        state = load_state(store)
        assert state is None or state.since == since or now - since < TOTALS_SETTLE + RUN * 6
    assert load_state(store).since == since
    assert crashed >= 2 and rebuilt == 1  # the history exercised both
    counts = full_counts(store, since, now)
    assert counts.pending + counts.orphaned > 0 and counts.joined > 0


def test_each_run_reads_only_the_hours_closed_since_the_last_and_the_tail(
    tmp_path: Path, monkeypatch
):
    store = LocalStore(tmp_path / "store")
    write(store, history(7, hours=30))
    since = START - timedelta(hours=1)
    read: list[tuple[datetime, datetime]] = []
    real = totals_module.read_part

    def spy(store, since, until, start, end):
        read.append((start, end))
        return real(store, since, until, start, end)

    monkeypatch.setattr(totals_module, "read_part", spy)
    first = START + timedelta(hours=28, minutes=10)
    window_totals(store, since, first, TOTALS_SETTLE, GRACE)
    closes = START + timedelta(hours=27)
    # A new window: its closed hours a UTC day at a time, then the open tail.
    midnight = START + timedelta(hours=18)
    assert read == [(since, midnight), (midnight, closes), (closes, first)]
    assert load_state(store).closed == closes
    read.clear()
    window_totals(store, since, first + RUN, TOTALS_SETTLE, GRACE)
    assert read == [(closes, first + RUN)]  # the tail alone: no hour closed since
    read.clear()
    later = first + 6 * RUN
    window_totals(store, since, later, TOTALS_SETTLE, GRACE)
    assert read == [(closes, closes + timedelta(hours=1)), (closes + timedelta(hours=1), later)]


def test_an_old_run_computes_from_scratch_and_leaves_a_newer_state_alone(tmp_path: Path):
    store = LocalStore(tmp_path / "store")
    write(store, history(3, hours=6))
    late = START + timedelta(hours=6)
    window_totals(store, START, late, TOTALS_SETTLE, GRACE)
    state = store.get(WINDOW_STATE_KEY)
    early = START + timedelta(hours=3, minutes=20)
    totals = window_totals(store, START, early, TOTALS_SETTLE, GRACE)
    assert store.get(WINDOW_STATE_KEY) == state
    assert totals.counts() == full_counts(store, START, early)


def test_the_state_round_trips_and_settle_must_cover_the_grace(tmp_path: Path):
    store = LocalStore(tmp_path / "store")
    write(store, history(4, hours=4))
    window_totals(store, START, START + timedelta(hours=4), TOTALS_SETTLE, GRACE)
    state = load_state(store)
    assert state is not None and state.totals.answers
    assert WindowState.from_json(state.to_json()) == state
    with pytest.raises(ValueError, match="grace"):
        window_totals(store, START, START + timedelta(hours=4), GRACE / 2, GRACE)


def test_what_the_totals_miss_is_a_row_written_after_its_hour_closed(tmp_path: Path):
    """The documented limit: a predictions file flushed, and a labelled row appended, more
    than the settle time after their hour ended are missed until the window restarts;
    the late feedback itself counts, as orphaned instead of joined."""
    store = LocalStore(tmp_path / "store")
    answered = START + timedelta(minutes=30)
    pid = f"{time_ordered_hex(answered, 1)}.stable.1.3.0123456789abcdef"
    on_time = f"{time_ordered_hex(answered, 2)}.stable.1.3.0123456789abcdef"
    probabilities = np.full(10, 0.05, np.float32)
    probabilities[3] = 0.55

    def record(prediction_id: str) -> PredictionRecord:
        return PredictionRecord(
            prediction_id, answered, "1", "stable", np.zeros((28, 28), np.uint8),
            probabilities, 3, 1.0,
        )  # fmt: skip

    given = answered + timedelta(minutes=1)
    write(store, [Write(answered + timedelta(seconds=3), (record(on_time),)),
                  Write(given, feedback=FeedbackRecord(pid, 3, given))])  # fmt: skip
    closing = START + timedelta(hours=2, minutes=10)  # hour 06:00 closed at 08:00
    for now in (START + timedelta(hours=1), closing):
        advance(store, now)
        window_totals(store, START, now, TOTALS_SETTLE, GRACE)
    assert load_state(store).closed == START + timedelta(hours=1)
    # The pod that answered at 06:30 reaches the store at 08:20: its hour closed before.
    write(store, [Write(closing + timedelta(minutes=10), (record(pid),))])
    now = closing + RUN * 2
    advance(store, now)  # the feedback of 06:31 joins now, into the closed hour 06:00
    totals = read_window(store, START, now, settle=TOTALS_SETTLE).counts
    full = full_counts(store, START, now)
    assert (full.predictions, full.joined, full.orphaned) == (2, 1, 0)
    assert totals == CollectCounts(predictions=1, feedback=1, joined=0, pending=0, orphaned=1)
