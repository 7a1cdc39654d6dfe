"""Compaction, the legacy layout's migration and retention, on the local backend; readers
stay exactly-once while pods write and compaction rewrites the hours under them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from contracts.records import (
    COMPACTED_PREFIX,
    FeedbackRecord,
    PredictionRecord,
    feedback_key,
)
from services.store.backends import LocalStore, StoreSettings
from services.store.compaction import DATASETS, compact, sweep
from services.store.readers import read_feedback, read_predictions
from services.store.retention import expired_partitions
from services.store.writers import FeedbackWriter, PredictionLog, encode_predictions

HOUR_START = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
NOW = datetime(2024, 5, 1, 13, 0, tzinfo=UTC)


def prediction(i: int, ts: datetime) -> PredictionRecord:
    rng = np.random.default_rng(i)
    return PredictionRecord(
        prediction_id=f"p{i:06d}",
        ts=ts,
        model_version="3",
        track="stable",
        image=rng.integers(0, 256, (28, 28), dtype=np.uint8),
        probabilities=np.full(10, 0.1, np.float32),
        label=i % 10,
        latency_ms=1.0,
    )


def files(store: LocalStore, prefix: str) -> list[str]:
    return [k.rsplit("/", 1)[-1] for k in store.list(prefix)]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_compaction_merges_each_closed_hour_once_and_keeps_the_rows(store, tmp_path):
    log = PredictionLog(store, "pod-a")
    for i in range(30):  # 10 flushes into 10:00-11:00, one record also flushed twice
        log.append(prediction(i, HOUR_START + timedelta(minutes=2 * i)))
        if i % 3 == 2:
            log.flush()
    store.put(
        "predictions/dt=2024-05-01/hour=10/pod-b-1-1.parquet",
        encode_predictions([prediction(5, HOUR_START + timedelta(minutes=10))]),
    )
    log.append(prediction(99, NOW - timedelta(minutes=1)))  # the open hour: left alone
    log.flush()
    writer = FeedbackWriter(store, tmp_path / "spool")
    for i in range(0, 30, 5):
        writer.write(FeedbackRecord(f"p{i:06d}", 1, HOUR_START + timedelta(minutes=2 * i + 1)))
    before = read_predictions(store, HOUR_START, NOW)
    assert len(store.list("predictions/dt=2024-05-01/hour=10/")) == 11

    report = compact(store, NOW)
    assert report.partitions == {"predictions": 1, "feedback": 1}  # 12:00-13:00 is open
    assert report.rows["predictions"] == 30  # the repeated row once
    [merged] = files(store, "predictions/dt=2024-05-01/hour=10/")
    assert merged.startswith(COMPACTED_PREFIX)
    assert len(files(store, "predictions/dt=2024-05-01/hour=12/")) == 1
    assert not files(store, "predictions/dt=2024-05-01/hour=12/")[0].startswith(COMPACTED_PREFIX)
    after = read_predictions(store, HOUR_START, NOW)
    assert after["prediction_id"].tolist() == before["prediction_id"].tolist()
    assert all(np.array_equal(a, b) for a, b in zip(after["image"], before["image"], strict=True))
    assert sorted(read_feedback(store, HOUR_START, NOW)["prediction_id"]) == [
        f"p{i:06d}" for i in range(0, 30, 5)
    ]
    assert all(k.endswith(".parquet") for k in store.list("feedback/"))

    # Idempotent: nothing left to do.
    assert compact(store, NOW).partitions == {}
    # A late flush into a compacted hour is merged by the next run.
    store.put(
        "predictions/dt=2024-05-01/hour=10/pod-c-1-1.parquet",
        encode_predictions([prediction(50, HOUR_START + timedelta(minutes=59))]),
    )
    assert compact(store, NOW + timedelta(seconds=1)).rows == {"predictions": 31}
    assert len(store.list("predictions/dt=2024-05-01/hour=10/")) == 1


def test_compaction_under_concurrent_writes_loses_and_repeats_nothing(store):
    """Pods keep flushing into closed hours (a late flush, a spool replay) while compaction
    runs again and again and a reader reads: every row written before a read is in it,
    once, and at the end every row is stored once."""
    written: list[str] = []
    written_lock = threading.Lock()
    stop = threading.Event()
    failures: list[str] = []
    reads: list[int] = []

    def pod(name: str, offset: int) -> None:
        log = PredictionLog(store, name)
        for batch in range(40):
            ids = []
            for j in range(5):
                i = offset + batch * 5 + j
                log.append(prediction(i, HOUR_START + timedelta(seconds=(i * 37) % 7200)))
                ids.append(f"p{i:06d}")
            log.flush()
            with written_lock:
                written.extend(ids)

    def compactor() -> None:
        while not stop.wait(0.02):
            compact(store, NOW, datasets=DATASETS[:1])

    def reader() -> None:
        while not stop.is_set():
            with written_lock:
                expected = set(written)
            try:
                frame = read_predictions(store, HOUR_START, NOW, columns=["label"])
            except Exception as exc:
                failures.append(f"a read failed: {exc}")
                return
            ids = frame["prediction_id"]
            if missing := expected - set(ids):
                failures.append(f"{len(missing)} rows missing from a read")
            reads.append(len(ids))

    pods = [threading.Thread(target=pod, args=(f"pod-{n}", n * 1000)) for n in range(2)]
    others = [threading.Thread(target=compactor), threading.Thread(target=reader)]
    for thread in pods + others:
        thread.start()
    for thread in pods:
        thread.join()
    stop.set()
    for thread in others:
        thread.join()
    compact(store, NOW)

    assert failures == []
    assert len(reads) > 3  # the reader did read while the others worked
    assert len(written) == 400
    stored = read_predictions(store, HOUR_START, NOW)["prediction_id"]
    assert sorted(stored) == sorted(written)
    for hour in ("10", "11"):
        [only] = files(store, f"predictions/dt=2024-05-01/hour={hour}/")
        assert only.startswith(COMPACTED_PREFIX)
    # In the files themselves, not through a reader's dedup: no row is stored twice.
    stored_rows = sum(
        pq.read_metadata(store.root / key).num_rows for key in store.list("predictions/")
    )
    assert stored_rows == 400


def test_compaction_moves_the_legacy_layout_into_hours(store):
    day = "2024-04-30"
    store.put(
        f"predictions/date={day}/pod-a-1-1.parquet",
        encode_predictions(
            [prediction(1, datetime(2024, 4, 30, 8, 5, tzinfo=UTC)),
             prediction(2, datetime(2024, 4, 30, 9, 5, tzinfo=UTC))]
        ),
    )  # fmt: skip
    legacy = FeedbackRecord("p000001", 4, datetime(2024, 4, 30, 8, 7, tzinfo=UTC))
    store.put(f"feedback/date={day}/p000001.json", legacy.to_json().rstrip(b"\n"))

    report = compact(store, NOW)
    assert report.legacy_files == 2
    assert store.list_dirs("predictions/") == ["dt=2024-04-30"]
    assert store.list_dirs("predictions/dt=2024-04-30/") == ["hour=08", "hour=09"]
    frame = read_predictions(store, datetime(2024, 4, 30, tzinfo=UTC), NOW)
    assert frame["prediction_id"].tolist() == ["p000001", "p000002"]
    assert read_feedback(store, datetime(2024, 4, 30, tzinfo=UTC), NOW)["label"].tolist() == [4]
    assert compact(store, NOW).legacy_files == 0


def test_retention_deletes_whole_days_past_their_days_only(store):
    days = {"predictions/": 8, "feedback/": 30}
    dirs = {
        "predictions/": ["dt=2024-04-22", "dt=2024-04-23", "dt=2024-04-30", "x"],
        "feedback/": ["dt=2024-04-01", "dt=2024-03-31"],
        "labelled/": ["dt=2020-01-01"],  # kept forever
    }
    # NOW is 2024-05-01 13:00: 2024-04-23 is within 8 days, 2024-04-22 is not.
    assert expired_partitions(dirs, days, NOW) == [
        "feedback/dt=2024-03-31/",
        "predictions/dt=2024-04-22/",
    ]
    old = prediction(1, datetime(2024, 4, 22, 23, 59, tzinfo=UTC))
    kept = prediction(2, datetime(2024, 4, 23, 0, 1, tzinfo=UTC))
    log = PredictionLog(store, "pod-a")
    log.append(old)
    log.append(kept)
    log.flush()
    store.put(feedback_key(FeedbackRecord("p000001", 1, old.ts)), b"{}\n")
    settings = StoreSettings(_env_file=None, retention_predictions_days=8)
    assert settings.retention() == {
        "predictions/": 8,
        "feedback/": 30,
        "feedback-ids/": 30,
    }
    deleted = sweep(store, settings.retention(), NOW)
    assert [k.split("/")[1] for k in deleted] == ["dt=2024-04-22"]
    assert read_predictions(store)["prediction_id"].tolist() == ["p000002"]
    assert store.list("feedback/")  # feedback is kept 30 days
    with pytest.raises(ValueError, match="greater than or equal to 8"):
        StoreSettings(_env_file=None, retention_predictions_days=7)


@pytest.mark.parametrize(("lookback", "merged"), [(None, {"feedback": 1}), ("0.05", {})])
def test_the_cli_compacts_the_hours_its_lookback_setting_reaches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lookback: str | None, merged: dict
):
    import json

    from typer.testing import CliRunner

    from digitloop.cli import app

    monkeypatch.setenv("DIGITLOOP_STORE_DIR", str(tmp_path / "store"))
    if lookback is not None:  # 0.05 days = 72 minutes: the hour 3 hours ago is out of reach
        monkeypatch.setenv("DIGITLOOP_COMPACTION_LOOKBACK_DAYS", lookback)
    three_hours_ago = datetime.now(UTC) - timedelta(hours=3)
    writer = FeedbackWriter(LocalStore(tmp_path / "store"), tmp_path / "spool")
    for i in range(3):
        writer.write(FeedbackRecord(f"p{i:06d}", 4, three_hours_ago))
    result = CliRunner().invoke(app, ["store", "compact", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["partitions"] == merged
