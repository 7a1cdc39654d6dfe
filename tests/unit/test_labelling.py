"""The labelled dataset that collect appends to: each run reads only what arrived since its
watermark, and a crash between its writes loses and doubles nothing."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from contracts.records import FeedbackRecord, PredictionRecord, time_ordered_hex
from pipelines.steps.labelling import STATE_KEY, advance, hour_ranges, load_state
from pipelines.steps.window import read_window
from services.store.backends import LocalStore, StoreUnavailable
from services.store.writers import FeedbackWriter, PredictionLog

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def timed_id(ts: datetime, i: int) -> str:
    """An id as the service makes them: it carries its time."""
    return f"{time_ordered_hex(ts, i)}.stable.1.3.0123456789abcdef"


def drawn(store: LocalStore, spool: Path, items: list[tuple[str, datetime, datetime | None]]):
    log = PredictionLog(store, "pod-a")
    writer = FeedbackWriter(store, spool)
    for prediction_id, ts, labelled_at in items:
        log.append(
            PredictionRecord(
                prediction_id, ts, "1", "stable", np.full((28, 28), 7, np.uint8),
                np.full(10, 0.1, np.float32), 3, 1.0,
            )
        )  # fmt: skip
        if labelled_at is not None:
            writer.write(FeedbackRecord(prediction_id, 5, labelled_at))
    log.flush()


def labelled_rows(store: LocalStore) -> list[str]:
    """Every prediction id in the labelled dataset's files, duplicates included."""
    ids: list[str] = []
    for key in store.list("labelled/"):
        ids += pq.read_table(io.BytesIO(store.get(key))).column("prediction_id").to_pylist()
    return ids


class CrashingStore(LocalStore):
    """Dies at the n-th write of a key starting with ``prefix``."""

    def __init__(self, root: Path, prefix: str, at: int = 1) -> None:
        super().__init__(root)
        self.prefix, self.at, self.seen = prefix, at, 0

    def put(self, key, data, content_type="application/octet-stream"):
        if key.startswith(self.prefix):
            self.seen += 1
            if self.seen == self.at:
                raise StoreUnavailable("the pod was killed")
        super().put(key, data, content_type)


def test_each_run_reads_only_what_arrived_since_its_watermark(tmp_path):
    store = LocalStore(tmp_path / "store")
    old = NOW - timedelta(days=3)
    drawn(store, tmp_path / "spool", [(timed_id(old, 1), old, old + timedelta(minutes=1))])
    first = advance(store, old + timedelta(hours=2))
    assert (first.arrived, first.appended) == (1, 1)
    assert load_state(store).watermark == old + timedelta(hours=2)

    items = [(timed_id(NOW - timedelta(minutes=m), m), NOW - timedelta(minutes=m),
              NOW - timedelta(minutes=m - 1)) for m in (30, 20, 2)]  # fmt: skip
    drawn(store, tmp_path / "spool", items)
    second = advance(store, NOW)
    assert (second.arrived, second.appended) == (3, 3)  # not the one of three days ago
    # The next run, with nothing new: it reads the hour its overlap falls in again (the
    # three records of 11:00-12:00), and appends nothing twice.
    third = advance(store, NOW + timedelta(minutes=10))
    assert (third.arrived, third.appended) == (3, 0)
    assert sorted(labelled_rows(store)) == sorted([timed_id(old, 1), *(i[0] for i in items)])
    window = read_window(store, NOW - timedelta(hours=1), NOW)
    assert window.labelled["true_label"].tolist() == [5, 5, 5]
    assert window.counts.joined == 3


def test_feedback_before_its_prediction_is_flushed_joins_in_a_later_run(tmp_path):
    store = LocalStore(tmp_path / "store")
    ts = NOW - timedelta(minutes=3)
    pid = timed_id(ts, 9)
    FeedbackWriter(store, tmp_path / "spool").write(FeedbackRecord(pid, 4, ts))
    assert advance(store, NOW).unjoined == 1
    assert read_window(store, NOW - timedelta(hours=1), NOW).counts.pending == 1
    drawn(store, tmp_path / "other", [(pid, ts, None)])  # the pod flushes after the run
    later = NOW + timedelta(minutes=10)
    assert advance(store, later).appended == 1
    window = read_window(store, NOW - timedelta(hours=1), later)
    assert (window.counts.joined, window.counts.pending, window.counts.orphaned) == (1, 0, 0)


@pytest.mark.parametrize(
    ("prefix", "at"),
    [
        ("labelled/", 1),  # dies before any labelled row is written
        ("labelled/", 2),  # dies after one of two hours' files
        ("loop-state/", 1),  # dies after the rows, before the watermark moves
    ],
)
def test_a_crash_between_steps_loses_and_doubles_nothing(tmp_path, prefix, at):
    root = tmp_path / "store"
    items = [
        (timed_id(NOW - timedelta(minutes=m), m), NOW - timedelta(minutes=m),
         NOW - timedelta(minutes=m - 1))
        for m in (70, 50, 10)  # feedback in two hours: two labelled files
    ]  # fmt: skip
    drawn(LocalStore(root), tmp_path / "spool", items)
    with pytest.raises(StoreUnavailable):
        advance(CrashingStore(root, prefix, at), NOW)
    assert not LocalStore(root).exists(STATE_KEY)  # the watermark did not move

    store = LocalStore(root)  # the next run
    advance(store, NOW + timedelta(minutes=10))
    advance(store, NOW + timedelta(minutes=20))
    assert sorted(labelled_rows(store)) == sorted(i[0] for i in items)


def test_an_id_with_its_time_is_looked_for_in_its_hour_only():
    t = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
    edge = datetime(2026, 3, 2, 11, 59, 30, tzinfo=UTC)
    assert hour_ranges([t]) == [(t.replace(minute=0), t.replace(minute=0) + timedelta(hours=1))]
    assert hour_ranges([t, edge]) == [
        (datetime(2026, 3, 2, 10, tzinfo=UTC), datetime(2026, 3, 2, 13, tzinfo=UTC))
    ]
