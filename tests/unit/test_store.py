"""The store on its local backend: layout, formats, and the writers' failure behaviour."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.records import (
    PREDICTIONS_SCHEMA,
    FeedbackMarker,
    FeedbackRecord,
    PredictionRecord,
    feedback_key,
    feedback_marker_key,
    key_date,
    key_hour,
    prediction_time,
    predictions_key,
    time_ordered_hex,
)
from services.store.backends import (
    LocalStore,
    ObjectNotFound,
    S3Store,
    StoreSettings,
    StoreUnavailable,
    open_store,
)
from services.store.compaction import compact
from services.store.readers import decode_predictions, read_feedback, read_predictions
from services.store.writers import (
    PENDING_FOR,
    DuplicateFeedback,
    FeedbackWriter,
    PredictionLog,
    SpoolFull,
    encode_predictions,
)

DAY = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class FlakyStore(LocalStore):
    """A local store that fails like an unreachable server while ``down`` is set.

    It also records the order in which keys were written, which a bucket cannot tell.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.down = False
        self.written: list[str] = []

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable(f"{self.description}: connection refused")

    def put(self, key, data, content_type="application/octet-stream"):
        self._check()
        super().put(key, data, content_type)
        self.written.append(key)

    def put_if_absent(self, key, data, content_type="application/octet-stream"):
        self._check()
        created = super().put_if_absent(key, data, content_type)
        if created:
            self.written.append(key)
        return created

    def get(self, key):
        self._check()
        return super().get(key)

    def list(self, prefix):
        self._check()
        return super().list(prefix)


def prediction(i: int, ts: datetime = DAY, prefix: str = "p") -> PredictionRecord:
    rng = np.random.default_rng(i)
    probabilities = rng.dirichlet(np.ones(10)).astype(np.float32)
    return PredictionRecord(
        prediction_id=f"{prefix}{i:05d}",
        ts=ts,
        model_version="3",
        track="stable",
        image=rng.integers(0, 256, (28, 28), dtype=np.uint8),
        probabilities=probabilities,
        label=int(probabilities.argmax()),
        latency_ms=1.5 + i,
    )


def feedback(i: int, ts: datetime = DAY, label: int = 7) -> FeedbackRecord:
    return FeedbackRecord(prediction_id=f"p{i:05d}", label=label, ts=ts)


def stored_rows(store: LocalStore) -> list[str]:
    """Every prediction id in every predictions object, duplicates included."""
    ids: list[str] = []
    for key in store.list("predictions/"):
        ids += pq.read_table(io.BytesIO(store.get(key))).column("prediction_id").to_pylist()
    return ids


def stored_feedback(store: LocalStore, i: int) -> FeedbackRecord:
    """The feedback the store kept for prediction ``i`` (its marker holds the winner)."""
    return FeedbackRecord.from_json(store.get(feedback_marker_key(f"p{i:05d}")))


@pytest.fixture
def store(tmp_path: Path) -> FlakyStore:
    return FlakyStore(tmp_path / "store")


# --- layout and formats -------------------------------------------------------------------


def test_keys_follow_the_hourly_layout_in_utc():
    late = datetime(2024, 5, 1, 23, 59, 59, 999_000, tzinfo=UTC)
    assert predictions_key("pod-a", late, 7) == (
        "predictions/dt=2024-05-01/hour=23/pod-a-1714607999999-7.parquet"
    )
    # 01:30 in UTC+2 is still the previous day in UTC.
    plus_two = datetime(2024, 5, 2, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert predictions_key("pod-a", plus_two, 0).startswith("predictions/dt=2024-05-01/hour=23/")
    record = FeedbackRecord(prediction_id="abc.stable.3.7.0f", label=2, ts=plus_two)
    assert feedback_key(record) == "feedback/dt=2024-05-01/hour=23/abc.stable.3.7.0f.json"
    # A record replayed later goes into the hour it reaches the store.
    replayed = feedback_key(record, arrived=plus_two + timedelta(hours=3))
    assert replayed == "feedback/dt=2024-05-02/hour=02/abc.stable.3.7.0f.json"
    assert feedback_marker_key("abc.stable.3.7.0f") == "feedback-ids/abc.stable.3.7.0f"


# Any instant from 1970 on, in any UTC offset a clock can have.
aware_times = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.builds(
        timezone, st.timedeltas(min_value=-timedelta(hours=23), max_value=timedelta(hours=23))
    ),
)


@given(when=aware_times, seq=st.integers(0, 10**6))
def test_every_key_gives_back_the_utc_hour_of_its_record(when: datetime, seq: int):
    utc = when.astimezone(UTC)
    hour = utc.replace(minute=0, second=0, microsecond=0)
    assert key_hour(predictions_key("pod-a", when, seq)) == hour
    assert key_date(predictions_key("pod-a", when, seq)) == utc.date()
    record = FeedbackRecord(prediction_id="abc.stable.3.7.0f", label=2, ts=when)
    assert key_hour(feedback_key(record)) == hour


@given(when=aware_times, bits=st.integers(0, 2**74 - 1))
def test_time_ordered_ids_give_back_their_time(when: datetime, bits: int):
    unique = time_ordered_hex(when, bits)
    assert len(unique) == 32 and int(unique, 16) >= 0
    utc = when.astimezone(UTC)
    ms = utc.replace(microsecond=utc.microsecond // 1000 * 1000)
    assert prediction_time(f"{unique}.stable.3.7.0123456789abcdef") == ms
    # ids of before (uuid4) and names made by hand carry no time
    assert prediction_time("4f0e8a4c9b2d4e7fa1b2c3d4e5f60718.stable.3.7.0123456789abcdef") is None
    assert prediction_time("p00001") is None


@pytest.mark.parametrize(
    "key",
    [
        "reports/run-1/decision.json",
        "predictions/pod-a-1-1.parquet",
        "predictions/date=2024-13-01/pod-a-1-1.parquet",
        "predictions/dt=2024-05-01/hour=24/pod-a-1-1.parquet",
        "predictions/dt=2024-05-01/pod-a-1-1.parquet",
        "feedback/day=2024-05-01/p1.json",
    ],
)
def test_keys_outside_the_layout_have_no_date(key: str):
    assert key_date(key) is None


def test_predictions_encode_and_decode_round_trip():
    records = [prediction(i, DAY + timedelta(microseconds=1500 * i)) for i in range(3)]
    table = decode_predictions(encode_predictions(records))

    assert table.schema.equals(PREDICTIONS_SCHEMA)
    decoded = table.to_pylist()
    assert [row["prediction_id"] for row in decoded] == [r.prediction_id for r in records]
    for row, record in zip(decoded, records, strict=True):
        assert row["ts"] == record.ts.replace(microsecond=record.ts.microsecond // 1000 * 1000)
        assert np.array_equal(np.array(row["image"], np.uint8).reshape(28, 28), record.image)
        assert np.array_equal(np.array(row["probabilities"], np.float32), record.probabilities)
        assert (row["label"], row["track"]) == (record.label, record.track)
    empty = decode_predictions(encode_predictions([]))
    assert empty.num_rows == 0 and empty.schema.equals(PREDICTIONS_SCHEMA)


def test_predictions_keep_their_novelty_and_files_from_before_the_column_still_read(
    store: FlakyStore,
):
    scored = [
        dataclasses.replace(prediction(i, DAY + timedelta(seconds=i)), novelty=score)
        for i, score in enumerate([1.5, None])
    ]
    table = decode_predictions(encode_predictions(scored))
    assert table.column("novelty").to_pylist() == [1.5, None]
    # A file written before the column existed: the same rows without it.
    old = table.drop_columns(["novelty"])
    sink = io.BytesIO()
    pq.write_table(old, sink)
    store.put(predictions_key("pod-old", DAY, 0), sink.getvalue())
    store.put(predictions_key("pod-new", DAY, 0), encode_predictions([prediction(7, DAY)]))
    assert decode_predictions(sink.getvalue()).column("novelty").null_count == 2
    frame = read_predictions(store, since=DAY - timedelta(hours=1))
    assert len(frame) == 3 and frame["novelty"].isna().all()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ts": datetime(2024, 5, 1)}, "timezone-aware"),
        ({"track": "blue"}, "track"),
        ({"image": np.zeros((28, 28), np.float32)}, "uint8"),
        ({"image": np.zeros((784,), np.uint8)}, "(28, 28)"),
        ({"probabilities": np.zeros(9, np.float32)}, "(10,)"),
        ({"label": 10}, "0-9"),
        ({"prediction_id": "../etc"}, "prediction_id"),
    ],
)
def test_bad_prediction_records_are_refused_when_made(change, message):
    fields = prediction(1).__dict__ | change
    with pytest.raises(ValueError, match=message):
        PredictionRecord(**fields)


def test_feedback_json_round_trip():
    record = FeedbackRecord("p1", 4, datetime(2024, 5, 1, 8, 0, 0, 123456, tzinfo=UTC), "sim")
    body = record.to_json()
    assert b'"ts":"2024-05-01T08:00:00.123456Z"' in body
    assert FeedbackRecord.from_json(body) == record
    with pytest.raises(ValueError, match="not a feedback record"):
        FeedbackRecord.from_json(b'{"prediction_id": "p1"}')


def test_predictions_parquet_has_the_schema_and_the_values(store: FlakyStore):
    log = PredictionLog(store, pod="pod-a")
    records = [prediction(i, DAY + timedelta(microseconds=1500 * i)) for i in range(3)]
    for record in records:
        log.append(record)
    [key] = log.flush()

    assert key.startswith("predictions/dt=2024-05-01/hour=12/pod-a-") and key.endswith("-1.parquet")
    table = pq.read_table(io.BytesIO(store.get(key)))
    assert table.schema.equals(PREDICTIONS_SCHEMA)
    rows = table.to_pylist()
    for row, record in zip(rows, records, strict=True):
        assert row["prediction_id"] == record.prediction_id
        # Stored with millisecond precision.
        assert row["ts"] == record.ts.replace(microsecond=record.ts.microsecond // 1000 * 1000)
        assert (row["model_version"], row["track"]) == ("3", "stable")
        assert np.array_equal(np.array(row["image"], np.uint8).reshape(28, 28), record.image)
        assert np.array_equal(np.array(row["probabilities"], np.float32), record.probabilities)
        assert row["label"] == record.label
        assert row["latency_ms"] == pytest.approx(record.latency_ms)


def test_local_store_put_if_absent_get_and_list(store: FlakyStore):
    assert store.put_if_absent("feedback/date=2024-05-01/a.json", b"first") is True
    assert store.put_if_absent("feedback/date=2024-05-01/a.json", b"second") is False
    assert store.get("feedback/date=2024-05-01/a.json") == b"first"
    store.put("reports/run-1/decision.json", b"{}")
    store.put("reports/run-10/decision.json", b"{}")
    store.put("feedback/date=2024-04-30/b.json", b"x")

    # A string prefix, as in S3; temp files never show.
    assert store.list("reports/run-1") == [
        "reports/run-1/decision.json",
        "reports/run-10/decision.json",
    ]
    assert store.list("feedback/") == [
        "feedback/date=2024-04-30/b.json",
        "feedback/date=2024-05-01/a.json",
    ]
    assert store.list("nothing/") == []
    assert not list(store.root.rglob(".*"))
    assert store.exists("reports/run-1/decision.json")
    assert not store.exists("reports/run-2/decision.json")
    with pytest.raises(ObjectNotFound):
        store.get("reports/run-2/decision.json")
    for key in ("../x", "/abs", "a//b", "a/.hidden", ""):
        with pytest.raises(ValueError, match="invalid key"):
            store.put(key, b"")


def test_local_store_ping_fails_on_a_file_in_the_way(tmp_path: Path):
    (tmp_path / "file").write_text("")
    LocalStore(tmp_path / "store").ping()
    with pytest.raises(StoreUnavailable):
        LocalStore(tmp_path / "file" / "store").ping()


# --- the predictions log ------------------------------------------------------------------


def test_appends_from_many_threads_land_exactly_once(store: FlakyStore):
    log = PredictionLog(store, pod="pod-a", flush_interval_s=0.02)
    log.start()  # flushes run while the threads append

    def append(start: int) -> None:
        for i in range(start, start + 300):
            log.append(prediction(i, prefix="t"))

    threads = [threading.Thread(target=append, args=(n * 300,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    log.close()  # idempotent

    ids = stored_rows(store)
    assert sorted(ids) == [f"t{i:05d}" for i in range(1200)]
    assert log.pending == 0
    assert len(store.list("predictions/")) > 1  # it did flush in the background
    assert len(read_predictions(store)) == 1200


def test_a_flush_writes_one_object_per_utc_hour(store: FlakyStore):
    log = PredictionLog(store, pod="pod-a")
    log.append(prediction(1, datetime(2024, 5, 1, 23, 59, tzinfo=UTC)))
    log.append(prediction(2, datetime(2024, 5, 2, 0, 1, tzinfo=UTC)))
    log.append(prediction(3, datetime(2024, 5, 1, 23, 58, tzinfo=UTC)))
    keys = log.flush()
    assert ["/".join(k.split("/")[1:3]) for k in keys] == [
        "dt=2024-05-01/hour=23",
        "dt=2024-05-02/hour=00",
    ]
    # The key's time is clamped into the records' hour, so it matches the partition.
    assert keys[0].split("-")[-2] == str(
        int(datetime(2024, 5, 1, 23, 59, 59, 999000, tzinfo=UTC).timestamp() * 1000)
    )
    assert log.flush() == []


def test_an_unavailable_store_keeps_predictions_and_a_crash_does_not_lose_them(
    store: FlakyStore, tmp_path: Path
):
    errors: list[tuple[str, Exception]] = []
    spool = tmp_path / "spool"
    log = PredictionLog(store, "pod-a", spool_dir=spool, on_error=lambda *e: errors.append(e))
    log.append(prediction(1))
    assert len(log.flush()) == 1
    store.down = True
    for i in range(2, 6):
        log.append(prediction(i))
    assert log.flush() == []
    assert log.pending == 4
    assert errors and errors[0][0] == "predictions"
    assert isinstance(errors[0][1], StoreUnavailable)
    assert len(list((spool / "predictions").rglob("*.parquet"))) == 1

    # The pod dies here; its successor finds the spilled batch and writes it.
    store.down = False
    successor = PredictionLog(store, "pod-b", spool_dir=spool)
    assert successor.pending == 4
    [key] = successor.flush()
    assert key.startswith("predictions/dt=2024-05-01/hour=12/pod-a-")  # the key it was given
    assert sorted(stored_rows(store)) == [f"p{i:05d}" for i in range(1, 6)]
    assert not list((spool / "predictions").rglob("*.parquet"))
    # The first pod, had it survived, finds its spilled copy gone and does not write twice.
    errors.clear()
    assert log.flush() == []
    assert (log.pending, errors) == (0, [])
    assert sorted(stored_rows(store)) == [f"p{i:05d}" for i in range(1, 6)]


def test_retries_after_an_outage_use_the_same_key(store: FlakyStore):
    log = PredictionLog(store, "pod-a")  # no spool: held in memory
    store.down = True
    log.append(prediction(1))
    assert log.flush() == []
    log.append(prediction(2))
    assert log.flush() == []
    store.down = False
    keys = log.flush()
    # No sequence number was spent on the failed attempts.
    assert len(keys) == 2 and keys[0].endswith("-1.parquet") and keys[1].endswith("-2.parquet")
    assert store.list("predictions/") == sorted(keys)
    assert sorted(stored_rows(store)) == ["p00001", "p00002"]
    assert log.pending == 0


def test_a_key_taken_by_another_writer_is_never_overwritten(tmp_path: Path):
    class RacingStore(FlakyStore):
        """Another worker with the same pod name writes each key just before we do."""

        def put_if_absent(self, key, data, content_type="application/octet-stream"):
            if key.endswith("-1.parquet"):
                super().put(key, b"theirs")
            return super().put_if_absent(key, data, content_type)

    store = RacingStore(tmp_path / "store")
    log = PredictionLog(store, "pod-a")
    log.append(prediction(1))  # dated 2024-05-01, flushed today
    [key] = log.flush()
    taken = key.removesuffix("-2.parquet") + "-1.parquet"
    assert key.endswith("-2.parquet") and key.startswith("predictions/dt=2024-05-01/hour=12/")
    assert store.get(taken) == b"theirs"
    assert pq.read_table(io.BytesIO(store.get(key))).column("prediction_id").to_pylist() == [
        "p00001"
    ]


def test_the_buffer_bound_drops_new_records_instead_of_growing(store: FlakyStore):
    log = PredictionLog(store, "pod-a", max_buffer=3)
    store.down = True
    for i in range(5):
        log.append(prediction(i))
    assert (log.pending, log.dropped) == (3, 2)
    log.flush()  # still down: the three stay held
    log.append(prediction(9))
    assert (log.pending, log.dropped) == (3, 3)
    store.down = False
    log.close()
    assert sorted(stored_rows(store)) == ["p00000", "p00001", "p00002"]


# --- feedback -----------------------------------------------------------------------------


def test_feedback_is_stored_once(store: FlakyStore, tmp_path: Path):
    writer = FeedbackWriter(store, tmp_path / "spool")
    assert writer.write(feedback(1)) == "stored"
    assert store.exists("feedback/dt=2024-05-01/hour=12/p00001.json")
    assert store.exists("feedback-ids/p00001")
    with pytest.raises(DuplicateFeedback):
        writer.write(feedback(1, label=3))
    assert FeedbackRecord.from_json(store.get(feedback_key(feedback(1)))).label == 7


def test_a_repeat_on_a_later_utc_day_is_a_duplicate(store: FlakyStore, tmp_path: Path):
    writer = FeedbackWriter(store, tmp_path / "spool")
    assert writer.write(feedback(1)) == "stored"
    next_day = feedback(1, ts=DAY + timedelta(days=1), label=3)
    with pytest.raises(DuplicateFeedback):
        writer.write(next_day)
    # Refused, and its record removed again: the store holds the first one only.
    assert not store.exists(feedback_key(next_day))
    assert store.list("feedback/") == [feedback_key(feedback(1))]
    assert read_feedback(store)["label"].tolist() == [7]
    # Another worker, restarted, or a replayed spool: the same answer.
    with pytest.raises(DuplicateFeedback):
        FeedbackWriter(store, tmp_path / "other").write(next_day)


def test_a_crash_between_the_record_and_its_marker_is_repaired(store: FlakyStore, tmp_path):
    store.put(feedback_key(feedback(1)), feedback(1).to_json())  # the marker never made it
    writer = FeedbackWriter(store, tmp_path / "spool")
    with pytest.raises(DuplicateFeedback):  # the client's retry: already stored
        writer.write(feedback(1))
    assert store.exists(feedback_marker_key("p00001"))
    with pytest.raises(DuplicateFeedback):  # so a later day's repeat is refused too
        writer.write(feedback(1, ts=DAY + timedelta(days=1)))


class Crash(BaseException):
    """The process dies here: nothing after it runs, no handler sees it."""


class DiesBeforeTheRecord(FlakyStore):
    """A store whose writer's process dies after the marker, before the record's write."""

    dying = True

    def put_if_absent(self, key, data, content_type="application/octet-stream"):
        if self.dying and key.startswith("feedback/"):
            self.dying = False
            raise Crash
        return super().put_if_absent(key, data, content_type)


def marker_of(store: LocalStore, i: int) -> FeedbackMarker:
    marker = FeedbackMarker.from_json(store.get(feedback_marker_key(f"p{i:05d}")))
    assert marker is not None
    return marker


def test_a_write_that_died_before_its_record_is_taken_over_once(tmp_path: Path):
    store = DiesBeforeTheRecord(tmp_path / "store")
    with pytest.raises(Crash):  # the client gets no answer
        FeedbackWriter(store, tmp_path / "spool", clock=lambda: DAY).write(feedback(1))
    assert store.exists(feedback_marker_key("p00001"))
    assert store.list("feedback/") == []

    # The client retries the next day, on a restarted worker.
    later = DAY + timedelta(days=1, hours=3)
    writer = FeedbackWriter(store, tmp_path / "spool", clock=lambda: later)
    retry = feedback(1, ts=later, label=3)
    assert writer.write(retry) == "stored"
    assert store.list("feedback/") == [feedback_key(retry)]  # once, in the hour it came
    assert marker_of(store, 1).key == feedback_key(retry)
    assert read_feedback(store)["label"].tolist() == [3]
    with pytest.raises(DuplicateFeedback):  # and from now on, a duplicate
        writer.write(feedback(1, ts=later + timedelta(days=1)))


def test_a_retry_while_the_claim_is_young_waits_in_the_spool(tmp_path: Path):
    store = DiesBeforeTheRecord(tmp_path / "store")
    with pytest.raises(Crash):
        FeedbackWriter(store, tmp_path / "spool", clock=lambda: DAY).write(feedback(1))
    now = [DAY + timedelta(seconds=5)]
    writer = FeedbackWriter(store, tmp_path / "spool", clock=lambda: now[0])
    errors = []
    writer._on_error = lambda kind, exc: errors.append(exc)
    # The first write may still be on its way: acknowledged as spooled, decided later.
    assert writer.write(feedback(1, ts=now[0], label=3)) == "spooled"
    assert writer.replay() == 0
    assert writer.spool_depth == 1
    now[0] = DAY + PENDING_FOR + timedelta(seconds=1)
    assert writer.replay() == 1
    assert read_feedback(store)["label"].tolist() == [3]
    assert errors == []  # a claim in flight is no store error


def test_a_spooled_record_finishes_its_own_claim_at_once(tmp_path: Path):
    class TimesOutOnTheRecord(FlakyStore):
        timing_out = True

        def put_if_absent(self, key, data, content_type="application/octet-stream"):
            if self.timing_out and key.startswith("feedback/"):
                self.timing_out = False
                raise StoreUnavailable("read timed out")  # after the marker landed
            return super().put_if_absent(key, data, content_type)

    store = TimesOutOnTheRecord(tmp_path / "store")
    writer = FeedbackWriter(store, tmp_path / "spool", clock=lambda: DAY)
    assert writer.write(feedback(1)) == "spooled"
    assert store.written == [feedback_marker_key("p00001")]
    assert writer.replay() == 1  # no waiting out the claim: it is this record's
    assert read_feedback(store)["label"].tolist() == [7]


def test_a_slow_first_write_wins_over_a_spooled_repeat(store: FlakyStore, tmp_path: Path):
    now = [DAY]
    writer = FeedbackWriter(store, tmp_path / "spool", clock=lambda: now[0])
    claim = FeedbackMarker(feedback(1), feedback_key(feedback(1)), DAY)
    store.put(feedback_marker_key("p00001"), claim.to_json())  # claimed, record on its way
    assert writer.write(feedback(1, label=3)) == "spooled"
    store.put(feedback_key(feedback(1)), feedback(1).to_json())  # ...and there it is
    now[0] = DAY + PENDING_FOR + timedelta(seconds=1)
    assert writer.replay() == 1  # left the spool as a duplicate
    assert read_feedback(store)["label"].tolist() == [7]


def test_a_claim_whose_record_was_compacted_is_still_a_duplicate(store: FlakyStore, tmp_path: Path):
    writer = FeedbackWriter(store, tmp_path / "spool", clock=lambda: DAY)
    assert writer.write(feedback(1)) == "stored"
    compact(store, DAY + timedelta(days=1), days=2)
    assert not store.exists(feedback_key(feedback(1)))  # merged into the hour's parquet
    later = DAY + timedelta(days=1)
    with pytest.raises(DuplicateFeedback):
        FeedbackWriter(store, tmp_path / "spool", clock=lambda: later).write(
            feedback(1, ts=later, label=3)
        )
    assert read_feedback(store)["label"].tolist() == [7]


def test_a_marker_of_the_older_record_first_writer_is_a_duplicate(
    store: FlakyStore, tmp_path: Path
):
    store.put(feedback_marker_key("p00001"), feedback(1).to_json())  # no key: its record came first
    assert FeedbackMarker.from_json(store.get(feedback_marker_key("p00001"))) is None
    with pytest.raises(DuplicateFeedback):
        FeedbackWriter(store, tmp_path / "spool").write(feedback(1, label=3))
    assert store.list("feedback/") == []


def test_feedback_spools_when_the_store_is_down_and_replays_in_order(
    store: FlakyStore, tmp_path: Path
):
    spool = tmp_path / "spool"
    writer = FeedbackWriter(store, spool, max_spooled=5)
    assert writer.write(feedback(0)) == "stored"
    store.down = True
    # Ids chosen so that name order differs from acknowledgement order.
    order = [9, 3, 7, 1, 5]
    for i in order:
        assert writer.write(feedback(i)) == "spooled"
    assert writer.spool_depth == 5
    with pytest.raises(DuplicateFeedback):
        writer.write(feedback(3))
    with pytest.raises(SpoolFull):
        writer.write(feedback(11))
    assert writer.replay() == 0  # still down: nothing moves
    assert writer.spool_depth == 5

    # The process restarts: the spool is still there.
    writer = FeedbackWriter(store, spool, max_spooled=5)
    assert writer.spool_depth == 5
    with pytest.raises(DuplicateFeedback):
        writer.write(feedback(7))

    store.down = False
    # Recorded elsewhere in the meantime: replay counts it as moved and keeps the original.
    assert FeedbackWriter(store, tmp_path / "other").write(feedback(5, label=2)) == "stored"
    store.written.clear()
    assert writer.replay() == 5
    assert writer.spool_depth == 0
    assert [k.rsplit("/", 1)[-1] for k in store.written if k.startswith("feedback-ids/")] == [
        f"p{i:05d}" for i in order if i != 5
    ]
    assert stored_feedback(store, 5).label == 2
    assert sorted(read_feedback(store)["prediction_id"]) == [
        f"p{i:05d}" for i in range(10) if i in {0, *order}
    ]
    assert not [p for p in spool.iterdir() if not p.name.startswith(".")]
    assert writer.write(feedback(11)) == "stored"


def test_while_the_spool_has_records_new_ones_queue_behind_them(store: FlakyStore, tmp_path: Path):
    writer = FeedbackWriter(store, tmp_path / "spool")
    store.down = True
    assert writer.write(feedback(1)) == "spooled"
    store.down = False
    assert writer.write(feedback(2)) == "spooled"  # not ahead of record 1
    assert writer.replay() == 2
    assert [k for k in store.written if k.startswith("feedback-ids/")] == [
        feedback_marker_key("p00001"),
        feedback_marker_key("p00002"),
    ]


def test_workers_sharing_a_spool_folder_store_each_id_once(store: FlakyStore, tmp_path: Path):
    spool = tmp_path / "spool"
    first, second = FeedbackWriter(store, spool), FeedbackWriter(store, spool)
    store.down = True
    assert first.write(feedback(1)) == "spooled"
    assert second.write(feedback(2)) == "spooled"
    assert second.write(feedback(1, label=3)) == "spooled"  # it cannot see the first's spool
    store.down = False
    assert second.replay() == 2
    assert first.replay() == 1  # its copy of 1 exists by now: counted, not written again
    assert stored_feedback(store, 1).label == 3
    assert read_feedback(store)["prediction_id"].tolist().count("p00001") == 1

    # Both die during an outage with the same id spooled; a restarted worker sees both.
    store.down = True
    first.write(feedback(5, label=1))
    second.write(feedback(5, label=2))
    second.write(feedback(6))
    store.down = False
    restarted = FeedbackWriter(store, spool)
    assert restarted.spool_depth == 2
    assert restarted.replay() == 2
    assert not list(spool.glob("*.json"))
    assert stored_feedback(store, 5).label == 1


def test_the_background_replay_drains_the_spool(store: FlakyStore, tmp_path: Path):
    writer = FeedbackWriter(store, tmp_path / "spool", retry_interval_s=0.05)
    writer.start()
    store.down = True
    assert writer.write(feedback(1)) == "spooled"
    time.sleep(0.2)
    assert writer.spool_depth == 1
    store.down = False
    deadline = time.monotonic() + 5
    while writer.spool_depth and time.monotonic() < deadline:
        time.sleep(0.02)
    writer.close()
    writer.close()
    assert writer.spool_depth == 0
    assert store.exists(feedback_marker_key("p00001"))


# --- readers ------------------------------------------------------------------------------


def test_readers_filter_by_date_and_time(store: FlakyStore):
    log = PredictionLog(store, "pod-a")
    times = [DAY - timedelta(days=2), DAY - timedelta(hours=1), DAY, DAY + timedelta(days=1)]
    for i, ts in enumerate(times):
        log.append(prediction(i, ts))
        store.put(feedback_key(feedback(i, ts)), feedback(i, ts).to_json())
    log.append(prediction(2, DAY))  # the same id twice: readers keep one
    log.flush()

    frame = read_predictions(store, since=DAY - timedelta(hours=1))
    assert frame["prediction_id"].tolist() == ["p00001", "p00002", "p00003"]
    assert str(frame["ts"].dtype) == "datetime64[ms, UTC]"
    image = frame["image"].iloc[1]
    assert image.shape == (784,) and image.dtype == np.uint8
    assert np.array_equal(image.reshape(28, 28), prediction(2).image)
    assert frame["probabilities"].iloc[0].dtype == np.float32
    assert len(read_predictions(store)) == 4

    feedback_frame = read_feedback(store, since=DAY)
    assert feedback_frame["prediction_id"].tolist() == ["p00002", "p00003"]
    assert feedback_frame["label"].tolist() == [7, 7]
    assert set(feedback_frame.columns) == {"prediction_id", "label", "ts", "source"}
    assert len(read_feedback(store)) == 4

    empty = read_feedback(LocalStore(store.root / "nothing"))
    assert empty.empty and list(empty.columns) == ["prediction_id", "label", "ts", "source"]
    assert read_predictions(LocalStore(store.root / "nothing")).columns.tolist() == list(
        PREDICTIONS_SCHEMA.names
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        read_feedback(store, since=datetime(2024, 5, 1))


# --- settings -----------------------------------------------------------------------------


def test_settings_pick_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DIGITLOOP_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DIGITLOOP_S3_ENDPOINT", raising=False)
    settings = StoreSettings()
    assert settings.store_path == tmp_path / "store"
    assert settings.spool_path == tmp_path / "spool"
    local = open_store(settings)
    assert isinstance(local, LocalStore)
    assert local.description == (tmp_path / "store").resolve().as_uri()

    monkeypatch.setenv("DIGITLOOP_S3_ENDPOINT", "127.0.0.1:9")
    monkeypatch.setenv("DIGITLOOP_S3_SECRET_KEY", "s3cr3t")
    settings = StoreSettings()
    assert "s3cr3t" not in repr(settings)
    remote = open_store(settings)  # connects lazily: nothing listens on port 9
    assert isinstance(remote, S3Store)
    assert remote.description == "s3://digitloop@127.0.0.1:9"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"DIGITLOOP_S3_BUCKET": "dl"}, "MinIO refuses names under 3"),
        ({"DIGITLOOP_S3_BUCKET": "Digit_Loop"}, "not a valid S3 bucket name"),
        ({"DIGITLOOP_S3_ENDPOINT": "http://minio:9000"}, "without a scheme"),
        ({"DIGITLOOP_POD_NAME": "pod/1"}, "pod_name"),
    ],
)
def test_settings_refuse_what_the_backend_would(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        StoreSettings()
