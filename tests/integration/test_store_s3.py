"""The S3 backend through the minio SDK against a real S3 server, including an outage."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from contracts.records import (
    FeedbackRecord,
    PredictionRecord,
    feedback_marker_key,
    partition,
    time_ordered_hex,
)
from pipelines.steps.labelling import advance
from pipelines.steps.totals import load_state as load_window_state
from pipelines.steps.window import read_window
from services.store.backends import (
    ObjectNotFound,
    S3Store,
    StoreSettings,
    StoreUnavailable,
    open_store,
)
from services.store.compaction import compact
from services.store.readers import read_feedback, read_predictions
from services.store.writers import DuplicateFeedback, FeedbackWriter, PredictionLog
from tests.unit.test_window_totals import full_counts, full_quality

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


class RecordingS3Store(S3Store):
    """The real S3 backend, noting the order in which keys were created."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.created: list[str] = []

    def put_if_absent(self, key, data, content_type="application/octet-stream"):
        created = super().put_if_absent(key, data, content_type)
        if created:
            self.created.append(key)
        return created


def connect(server, cls=S3Store, bucket: str = "digitloop") -> S3Store:
    return cls(server.endpoint, server.access_key, server.secret_key, bucket)


def prediction(i: int, ts: datetime = NOW) -> PredictionRecord:
    rng = np.random.default_rng(i)
    return PredictionRecord(
        prediction_id=f"p{i:05d}",
        ts=ts,
        model_version="4",
        track="canary" if i % 2 else "stable",
        image=rng.integers(0, 256, (28, 28), dtype=np.uint8),
        probabilities=rng.dirichlet(np.ones(10)).astype(np.float32),
        label=i % 10,
        latency_ms=2.0,
    )


def feedback(i: int, ts: datetime = NOW) -> FeedbackRecord:
    return FeedbackRecord(prediction_id=f"p{i:05d}", label=(i + 1) % 10, ts=ts)


def test_s3_store_objects_and_layout(s3_server, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DIGITLOOP_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("DIGITLOOP_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("DIGITLOOP_S3_SECRET_KEY", s3_server.secret_key)
    monkeypatch.setenv("DIGITLOOP_S3_BUCKET", "digitloop-layout")
    store = open_store(StoreSettings(data_dir=tmp_path))
    assert isinstance(store, S3Store)
    assert store.description == f"s3://digitloop-layout@{s3_server.endpoint}"
    store.ping()  # creates the bucket

    assert store.put_if_absent("reports/run-1/decision.json", b'{"a":1}', "application/json")
    assert not store.put_if_absent("reports/run-1/decision.json", b'{"a":2}')
    assert store.get("reports/run-1/decision.json") == b'{"a":1}'
    store.put("reports/run-1/decision.json", b'{"a":3}')
    assert store.get("reports/run-1/decision.json") == b'{"a":3}'
    store.put("reports/run-10/report.html", b"<html/>", "text/html")
    assert store.exists("reports/run-10/report.html")
    assert not store.exists("reports/run-2/report.html")
    with pytest.raises(ObjectNotFound):
        store.get("reports/run-2/report.html")

    log = PredictionLog(store, pod="pod-a")
    for i in range(5):
        log.append(prediction(i, NOW - timedelta(days=1) if i == 0 else NOW))
    keys = log.flush()
    writer = FeedbackWriter(store, tmp_path / "spool")
    assert writer.write(feedback(1)) == "stored"
    with pytest.raises(DuplicateFeedback):
        writer.write(feedback(1))

    now, day_before = partition(NOW), partition(NOW - timedelta(days=1))
    assert ["/".join(key.split("/")[1:3]) for key in keys] == [day_before, now]
    assert store.list("predictions/") == sorted(keys)
    assert store.list("feedback/") == [f"feedback/{now}/p00001.json"]
    assert store.exists(feedback_marker_key("p00001"))
    assert store.list_dirs("predictions/") == sorted({k.split("/")[1] for k in keys})
    assert store.list("reports/run-1") == [
        "reports/run-1/decision.json",
        "reports/run-10/report.html",
    ]
    frame = read_predictions(store, since=NOW - timedelta(hours=1))
    assert frame["prediction_id"].tolist() == [f"p{i:05d}" for i in range(1, 5)]
    assert np.array_equal(frame["image"].iloc[0].reshape(28, 28), prediction(1).image)
    assert read_feedback(store)["label"].tolist() == [2]


def test_nothing_acknowledged_is_lost_through_an_outage(s3_server, tmp_path: Path):
    store = connect(s3_server, RecordingS3Store)
    errors: list[str] = []
    log = PredictionLog(store, "pod-a", spool_dir=tmp_path / "spool", on_error=_note(errors))
    writer = FeedbackWriter(store, tmp_path / "spool" / "feedback", on_error=_note(errors))
    for i in range(3):
        log.append(prediction(i))
        assert writer.write(feedback(i)) == "stored"
    assert len(log.flush()) == 1

    s3_server.stop()
    started = time.monotonic()
    assert writer.write(feedback(3)) == "spooled"
    assert time.monotonic() - started < 3, "the outage must show in seconds"
    for i in range(4, 8):
        assert writer.write(feedback(i)) == "spooled"
    for i in range(3, 8):
        log.append(prediction(i))
    assert log.flush() == []
    assert log.pending == 5
    with pytest.raises(StoreUnavailable):
        store.ping()
    assert writer.replay() == 0
    assert time.monotonic() - started < 10
    assert {"predictions", "feedback"} <= set(errors)

    # The server comes back empty, as after a lost volume: the bucket is made again.
    s3_server.start()
    store.created.clear()
    assert writer.replay() == 5
    assert writer.spool_depth == 0
    assert [k for k in store.created if k.startswith("feedback-ids/")] == [
        feedback_marker_key(f"p{i:05d}") for i in range(3, 8)
    ]
    assert len(log.flush()) == 1
    assert log.pending == 0
    assert read_feedback(store)["prediction_id"].tolist() == [f"p{i:05d}" for i in range(3, 8)]
    assert read_predictions(store)["prediction_id"].tolist() == [f"p{i:05d}" for i in range(3, 8)]


def test_a_hung_server_times_out_instead_of_holding_the_request(s3_server, tmp_path: Path):
    store = S3Store(
        s3_server.endpoint,
        s3_server.access_key,
        s3_server.secret_key,
        "digitloop",
        read_timeout_s=0.5,
    )
    writer = FeedbackWriter(store, tmp_path / "spool")
    assert writer.write(feedback(0)) == "stored"
    s3_server.pause()
    started = time.monotonic()
    assert writer.write(feedback(1)) == "spooled"
    # Two attempts of the read timeout, not the SDK's default of minutes.
    assert time.monotonic() - started < 3
    s3_server.resume()
    assert writer.replay() == 1
    assert read_feedback(store)["prediction_id"].tolist() == ["p00000", "p00001"]


def test_the_spool_outlives_the_process_and_the_outage(s3_server, tmp_path: Path):
    spool = tmp_path / "spool"
    store = connect(s3_server)
    store.ping()
    s3_server.stop()
    writer = FeedbackWriter(store, spool)
    log = PredictionLog(store, "pod-a", spool_dir=spool)
    for i in range(4):
        assert writer.write(feedback(i)) == "spooled"
        log.append(prediction(i))
    log.close()  # SIGTERM during the outage: spilled to disk
    writer.close()

    s3_server.start()
    store = connect(s3_server)
    writer = FeedbackWriter(store, spool, retry_interval_s=0.1)
    log = PredictionLog(store, "pod-b", spool_dir=spool)
    assert (writer.spool_depth, log.pending) == (4, 4)
    writer.start()
    deadline = time.monotonic() + 10
    while writer.spool_depth and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()
    log.close()
    assert writer.spool_depth == 0 and log.pending == 0
    ids = [f"p{i:05d}" for i in range(4)]
    assert read_feedback(store)["prediction_id"].tolist() == ids
    assert read_predictions(store)["prediction_id"].tolist() == ids


def test_readers_compaction_labels_and_lifecycle_on_s3(s3_server, tmp_path: Path):
    """The same reads as on the local folder, through pyarrow's S3 client; compaction and
    the labelled dataset on S3; the bucket's expiry rules set where it is created."""
    retention = {"predictions/": 30, "feedback/": 30, "feedback-ids/": 30}
    store = S3Store(
        s3_server.endpoint, s3_server.access_key, s3_server.secret_key, "digitloop-read",
        retention=retention,
    )  # fmt: skip
    store.ping()
    assert store.lifecycle() == retention

    hour = (NOW - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    ids = [f"{time_ordered_hex(hour + timedelta(minutes=i), i)}.stable.4.1.0123456789abcdef"
           for i in range(12)]  # fmt: skip
    log = PredictionLog(store, "pod-a")
    writer = FeedbackWriter(store, tmp_path / "spool")
    for i, pid in enumerate(ids):
        record = prediction(i, hour + timedelta(minutes=i))
        log.append(PredictionRecord(**{**record.__dict__, "prediction_id": pid}))
        if i % 3 == 0:
            log.flush()
            writer.write(FeedbackRecord(pid, 7, hour + timedelta(minutes=i, seconds=30)))
    log.flush()
    before = read_predictions(store, hour, NOW)
    assert before["prediction_id"].tolist() == ids
    assert np.array_equal(before["image"].iloc[3].reshape(28, 28), prediction(3).image)
    assert len(store.list(f"predictions/{partition(hour)}/")) == 5

    report = compact(store, NOW)
    assert report.rows == {"predictions": 12, "feedback": 4}
    assert len(store.list(f"predictions/{partition(hour)}/")) == 1
    assert len(store.list(f"feedback/{partition(hour)}/")) == 1
    after = read_predictions(store, hour, NOW, columns=["label"])
    assert after["prediction_id"].tolist() == ids and "image" not in after.columns
    assert read_feedback(store, hour, NOW)["prediction_id"].tolist() == ids[::3]

    # Feedback for a prediction compacted before it came, and a repeat on a later day.
    late = FeedbackRecord(ids[1], 2, NOW - timedelta(minutes=1))
    assert writer.write(late) == "stored"
    with pytest.raises(DuplicateFeedback):
        writer.write(FeedbackRecord(ids[1], 3, NOW + timedelta(days=1)))
    assert advance(store, NOW).appended == 5
    window = read_window(store, hour, NOW)
    assert sorted(window.labelled["prediction_id"]) == sorted([*ids[::3], ids[1]])
    assert (window.counts.feedback, window.counts.joined) == (5, 5)
    # The counts and quality came from the running totals, their state kept on S3.
    assert load_window_state(store).closed > hour
    assert window.counts == full_counts(store, hour, NOW)
    assert window.totals.quality("4") == full_quality(store, hour, NOW, "4")
    assert window.images(window.predictions.tail(2)).shape == (2, 28, 28)


def _note(errors: list[str]):
    def on_error(kind: str, exc: Exception) -> None:
        assert isinstance(exc, StoreUnavailable)
        errors.append(kind)

    return on_error
