"""What the serving pod writes into the store: its predictions log and people's feedback.

:class:`PredictionLog` buffers predictions in memory and writes them in batches: losing a
few seconds of them in a crash is acceptable, blocking a request on the store is not.
:class:`FeedbackWriter` is the opposite: a person's label is acknowledged only once it is
durable, in the store or fsynced in a bounded local spool that is replayed in order.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.api import DIGITS
from contracts.records import (
    IMAGE_SIDE,
    PREDICTIONS_PREFIX,
    PREDICTIONS_SCHEMA,
    FeedbackMarker,
    FeedbackRecord,
    PredictionRecord,
    check_name,
    feedback_key,
    feedback_marker_key,
    predictions_key,
    unix_ms,
)
from services.store.backends import (
    ObjectNotFound,
    ObjectStore,
    StoreError,
    StoreUnavailable,
    write_durably,
)
from services.store.readers import feedback_stored

log = logging.getLogger(__name__)

PARQUET = "application/vnd.apache.parquet"
JSON = "application/json"

ErrorHook = Callable[[str, Exception], None]


class DuplicateFeedback(StoreError):
    """Feedback for this prediction id is already in the store or in the local spool."""


class SpoolFull(StoreError):
    """The store is down and the local spool is at its bound: do not acknowledge."""


class FeedbackPending(StoreUnavailable):
    """Another write claimed this id's marker moments ago and its record is not there yet:
    it may still be on its way. Spooled, and decided by the replay once the claim is old."""


# A marker whose key holds no record is taken for a write still in flight while younger
# than this (two PUTs take milliseconds; a slow S3 retry seconds), and for one that died
# between its two writes after.
PENDING_FOR = timedelta(seconds=30)


def encode_predictions(records: list[PredictionRecord]) -> bytes:
    """One parquet object (zstd) holding ``records`` in order."""
    n = len(records)
    images = (
        np.stack([r.image for r in records])
        if n
        else np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    )
    probabilities = np.asarray([r.probabilities for r in records], np.float32).reshape(n, DIGITS)
    columns = [
        pa.array([r.prediction_id for r in records], pa.string()),
        pa.array([unix_ms(r.ts) for r in records], pa.timestamp("ms", tz="UTC")),
        pa.array([r.model_version for r in records], pa.string()),
        pa.array([r.track for r in records], pa.string()),
        pa.FixedSizeListArray.from_arrays(
            pa.array(images.reshape(-1), pa.uint8()), type=PREDICTIONS_SCHEMA.field("image").type
        ),
        pa.FixedSizeListArray.from_arrays(
            pa.array(probabilities.reshape(-1), pa.float32()),
            type=PREDICTIONS_SCHEMA.field("probabilities").type,
        ),
        pa.array([int(r.label) for r in records], pa.int8()),
        pa.array([float(r.latency_ms) for r in records], pa.float32()),
        pa.array([None if r.novelty is None else float(r.novelty) for r in records], pa.float32()),
    ]
    table = pa.Table.from_arrays(columns, schema=PREDICTIONS_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _report(on_error: ErrorHook | None, what: str, exc: Exception) -> None:
    if on_error is None:
        log.warning("%s: %s", what, exc)
        return
    try:
        on_error(what, exc)
    except Exception:  # a broken hook must not stop the writers
        log.exception("on_error hook failed")


class _Worker:
    """A daemon thread calling ``tick`` every ``interval_s`` until stopped."""

    def __init__(self, name: str, interval_s: float, tick: Callable[[], object]) -> None:
        self._stop = threading.Event()
        self._interval_s = interval_s
        self._tick = tick
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._tick()
            except Exception:  # keep the thread alive; the next tick retries
                log.exception("%s failed", self._thread.name)

    def start(self) -> None:
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@dataclass
class _Batch:
    """One predictions object to write: its key is fixed at creation, so retrying it after
    an ambiguous failure overwrites the same object instead of duplicating its rows."""

    key: str
    rows: int
    data: bytes | None  # None once spilled: read back from spool_path
    spool_path: Path | None = None
    attempted: bool = False
    when: datetime | None = None  # the key's time, kept when a collision changes its seq

    def payload(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.spool_path is not None
        return self.spool_path.read_bytes()


class PredictionLog:
    """Buffers predictions and writes one parquet object per UTC hour per flush.

    Records the store does not take stay pending and are retried at the next flush; with a
    ``spool_dir`` they are also written to ``spool_dir/predictions`` (same relative keys), so
    a crash does not lose them: the next PredictionLog on that folder picks them up. At most
    ``max_buffer`` records wait in memory; beyond that new ones are dropped and counted in
    :attr:`dropped`, because serving must go on when the store is down for long.
    """

    def __init__(
        self,
        store: ObjectStore,
        pod: str,
        flush_interval_s: float = 5.0,
        spool_dir: Path | None = None,
        max_buffer: int = 100_000,
        on_error: ErrorHook | None = None,
    ) -> None:
        check_name(pod, "pod")
        self._store = store
        self._pod = pod
        self._spool = Path(spool_dir) / "predictions" if spool_dir is not None else None
        self._max_buffer = max_buffer
        self._on_error = on_error
        self._lock = threading.Lock()  # guards the buffer and the counters
        self._flush_lock = threading.Lock()  # one flush at a time; guards _batches and _seq
        self._buffer: list[PredictionRecord] = []
        self._batches: list[_Batch] = self._load_spool()
        self._pending_rows = sum(b.rows for b in self._batches)
        self._held_rows = 0  # records in memory: the buffer plus batches not spilled
        self._dropped = 0
        self._seq = 0
        self._worker = _Worker(f"prediction-log-{pod}", flush_interval_s, self.flush)

    def _load_spool(self) -> list[_Batch]:
        if self._spool is None or not self._spool.is_dir():
            return []
        batches = []
        for path in sorted(self._spool.rglob("*.parquet")):
            if path.name.startswith("."):
                continue
            key = PREDICTIONS_PREFIX + path.relative_to(self._spool).as_posix()
            try:
                rows = pq.read_metadata(path).num_rows
            except Exception as exc:  # keep it for a person to look at, never retry it
                with contextlib.suppress(OSError):
                    path.rename(path.with_name(path.name + ".corrupt"))
                _report(self._on_error, "predictions", exc)
                continue
            batches.append(_Batch(key, rows, None, path, attempted=True))
        if batches:
            log.info("%d spooled predictions batches to replay", len(batches))
        return batches

    @property
    def pending(self) -> int:
        """Records appended but not yet in the store (buffered, pending or spilled)."""
        with self._lock:
            return len(self._buffer) + self._pending_rows

    @property
    def dropped(self) -> int:
        """Records refused since start because ``max_buffer`` records were held in memory."""
        with self._lock:
            return self._dropped

    def append(self, record: PredictionRecord) -> None:
        """Buffer one record; thread-safe, O(1), no I/O."""
        with self._lock:
            if self._held_rows >= self._max_buffer:
                self._dropped += 1
                return
            self._buffer.append(record)
            self._held_rows += 1

    def flush(self) -> list[str]:
        """Write what is buffered and what earlier flushes could not; the keys written."""
        with self._flush_lock:
            with self._lock:
                records, self._buffer = self._buffer, []
                self._pending_rows += len(records)
            self._batches.extend(self._new_batches(records))
            written: list[str] = []
            failure: StoreUnavailable | None = None
            for batch in self._batches:
                try:
                    self._write(batch)
                except StoreUnavailable as exc:
                    # The store is down: do not spend a timeout on every other batch.
                    failure = exc
                    break
                except FileNotFoundError:
                    # Its spilled copy is gone: another worker sharing the spool folder
                    # found it at start-up and wrote it.
                    batch.rows = 0
                    continue
                except OSError as exc:  # the spilled copy cannot be read
                    _report(self._on_error, "predictions", exc)
                    batch.rows = 0
                    continue
                written.append(batch.key)
            done = set(written)
            self._batches = [b for b in self._batches if b.key not in done and b.rows]
            if failure is not None:
                self._spill()
                _report(self._on_error, "predictions", failure)
            with self._lock:
                self._pending_rows = sum(b.rows for b in self._batches)
                self._held_rows = len(self._buffer) + sum(
                    b.rows for b in self._batches if b.data is not None
                )
        return written

    def _new_batches(self, records: list[PredictionRecord]) -> list[_Batch]:
        by_hour: dict[datetime, list[PredictionRecord]] = {}
        for record in records:
            ts = record.ts.astimezone(UTC)
            by_hour.setdefault(ts.replace(minute=0, second=0, microsecond=0), []).append(record)
        now = datetime.now(UTC)
        batches = []
        for hour, group in sorted(by_hour.items()):
            # The key's time is the flush time, clamped into the records' hour so the key's
            # partition is theirs (the last hour's records flushed after it ended).
            last = hour + timedelta(hours=1) - timedelta(milliseconds=1)
            when = min(max(now, hour), last)
            data = encode_predictions(group)
            batches.append(_Batch(self._next_key(when), len(group), data, when=when))
        return batches

    def _next_key(self, when: datetime) -> str:
        self._seq += 1
        return predictions_key(self._pod, when, self._seq)

    def _write(self, batch: _Batch) -> None:
        data = batch.payload()
        if batch.attempted:
            # An earlier attempt may have landed: overwrite it with the same bytes.
            self._store.put(batch.key, data, PARQUET)
        else:
            batch.attempted = True
            # Two workers with the same pod name can pick the same key: never overwrite
            # someone else's object, take the next sequence number instead.
            while not self._store.put_if_absent(batch.key, data, PARQUET):
                batch.key = self._next_key(batch.when or datetime.now(UTC))
                self._move_spilled(batch)
        if batch.spool_path is not None:
            with contextlib.suppress(OSError):  # a stale copy is rewritten, never duplicated
                batch.spool_path.unlink(missing_ok=True)

    def _move_spilled(self, batch: _Batch) -> None:
        if self._spool is not None and batch.spool_path is not None:
            target = self._spool / batch.key.removeprefix(PREDICTIONS_PREFIX)
            batch.spool_path.rename(target)
            batch.spool_path = target

    def _spill(self) -> None:
        if self._spool is None:
            return
        for batch in self._batches:
            if batch.data is None:
                continue
            path = self._spool / batch.key.removeprefix(PREDICTIONS_PREFIX)
            try:
                write_durably(path, batch.data)
            except OSError as exc:
                _report(self._on_error, "predictions", exc)
                return
            batch.spool_path, batch.data = path, None

    def start(self) -> None:
        """Flush every ``flush_interval_s`` in a daemon thread."""
        self._worker.start()

    def close(self) -> None:
        """Stop the thread and flush what is left; safe to call more than once."""
        self._worker.stop()
        self.flush()
        with self._lock:
            lost = self._held_rows if self._spool is None else 0
        if lost:
            log.error("%d predictions not written to %s", lost, self._store.description)


class FeedbackWriter:
    """Writes each feedback record once, durably, through a bounded spool when needed.

    :meth:`write` returns only when the record is in the store or fsynced in ``spool_dir``
    (one file per record, ``<seq>-<prediction_id>.json``). In the store a record is two
    conditional writes: first the id's marker (:class:`~contracts.records.FeedbackMarker`),
    which claims the id and names the key the record goes to, then the record under that
    key, in the hour it arrives (what the loop reads). The marker makes a repeat in a later
    hour or on a later day a duplicate; a write that died between the two is taken over by
    the next attempt (:meth:`_store_once`). While the spool holds anything, new records
    join its tail without trying the store: the order of acknowledgement is kept, and a
    request does not wait on a store that just failed. The background thread (or
    :meth:`replay`) drains the spool oldest first. During an outage a duplicate of a
    record already in the store cannot be detected; replay then drops it.

    Worker processes may share ``spool_dir``: each replays what it spooled plus whatever it
    found at start-up (a dead worker's records), and a record is written at most once
    because every write is conditional. The ``max_spooled`` bound is per writer.
    """

    def __init__(
        self,
        store: ObjectStore,
        spool_dir: Path,
        max_spooled: int = 10_000,
        retry_interval_s: float = 2.0,
        on_error: ErrorHook | None = None,
        on_depth: Callable[[int], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._clock = clock
        self._dir = Path(spool_dir)
        self._max_spooled = max_spooled
        self._on_error = on_error
        # Told the spool depth whenever it changes (the service's gauge).
        self._on_depth = on_depth
        self._lock = threading.Lock()  # guards _spooled and _seq
        self._replay_lock = threading.Lock()
        self._spooled: OrderedDict[str, Path] = OrderedDict()  # prediction id -> file
        self._seq = 0
        self._load_spool()
        self._worker = _Worker("feedback-replay", retry_interval_s, self._replay_if_needed)

    def _load_spool(self) -> None:
        if not self._dir.is_dir():
            return
        entries = []
        for path in self._dir.glob("*.json"):
            seq, _, prediction_id = path.stem.partition("-")
            if path.name.startswith(".") or not seq.isdigit() or not prediction_id:
                continue
            entries.append((int(seq), prediction_id, path))
        for seq, prediction_id, path in sorted(entries):
            self._seq = seq
            if prediction_id in self._spooled:
                # Two workers sharing the folder both took this id during an outage: only
                # the first could ever land (writes are conditional), as replay would find.
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            self._spooled[prediction_id] = path
        if entries:
            log.info("%d spooled feedback records to replay", len(entries))

    @property
    def spool_depth(self) -> int:
        with self._lock:
            return len(self._spooled)

    def write(self, record: FeedbackRecord) -> Literal["stored", "spooled"]:
        """Store ``record`` durably; anything raised means it was NOT acknowledged.

        Raises:
            DuplicateFeedback: the prediction id is already in the store or the spool.
            SpoolFull: the store is down and the spool holds ``max_spooled`` records.
            StoreUnavailable: neither the store nor the spool folder could take it.
        """
        data = record.to_json()
        with self._lock:
            self._check_not_spooled(record)
            if self._spooled:
                self._spool(record, data)
                return "spooled"
        try:
            stored = self._store_once(record, data, feedback_key(record), self._clock())
        except StoreUnavailable as exc:
            if not isinstance(exc, FeedbackPending):
                _report(self._on_error, "feedback", exc)
            with self._lock:
                self._check_not_spooled(record)
                self._spool(record, data)
            return "spooled"
        if not stored:
            raise DuplicateFeedback(f"feedback for prediction {record.prediction_id} exists")
        return "stored"

    def _store_once(self, record: FeedbackRecord, data: bytes, key: str, now: datetime) -> bool:
        """Store ``record`` under ``key`` unless feedback for its id exists; False if it did.

        The marker goes first, naming ``key``. If the id is already claimed, the record the
        claim names decides: stored (or merged by compaction) means a duplicate. A claim
        whose record is missing belongs to a write that died between its two writes (the
        client had no answer and retries) once it is older than :data:`PENDING_FOR`, or at
        once when it claims this same record (the spool replaying a write that timed out
        after its marker landed): this attempt takes it over, in its own hour, so the record
        is stored once however late the retry. A younger claim of another record may still
        be in flight: :class:`FeedbackPending`.

        Raises:
            FeedbackPending: the id was claimed moments ago and its record is not there yet.
            StoreUnavailable: the store failed.
        """
        marker_key = feedback_marker_key(record.prediction_id)
        marker = FeedbackMarker(record, key, now).to_json()
        if not self._store.put_if_absent(marker_key, marker, JSON):
            claim = self._claim(marker_key)
            if claim is None or feedback_stored(self._store, claim.key, record.prediction_id):
                return False
            # The claim of this very record (a spooled record whose first attempt timed out
            # after the marker landed) is ours to finish now.
            if claim.record != record and now - claim.marked < PENDING_FOR:
                raise FeedbackPending(
                    f"feedback for {record.prediction_id} is being written by another request"
                )
            # Two attempts taking over at once may both get here; readers keep one per id.
            self._store.put(marker_key, marker, JSON)
        # False only when this very key holds a record the marker did not know of: one left
        # by the older record-first writer, or a takeover racing this one.
        return self._store.put_if_absent(key, data, JSON)

    def _claim(self, marker_key: str) -> FeedbackMarker | None:
        """The marker under ``marker_key``; None when it holds a stored record's claim."""
        try:
            return FeedbackMarker.from_json(self._store.get(marker_key))
        except ObjectNotFound:
            return None  # expired by the bucket's lifecycle under us: long stored
        except ValueError as exc:
            _report(self._on_error, "feedback", exc)
            return None  # unreadable: refuse the repeat rather than store it twice

    def _check_not_spooled(self, record: FeedbackRecord) -> None:
        if record.prediction_id in self._spooled:
            raise DuplicateFeedback(
                f"feedback for prediction {record.prediction_id} is already spooled"
            )

    def _spool(self, record: FeedbackRecord, data: bytes) -> None:
        if len(self._spooled) >= self._max_spooled:
            raise SpoolFull(
                f"store unavailable and {len(self._spooled)} feedback records already "
                f"spooled in {self._dir} (bound {self._max_spooled})"
            )
        path = self._dir / f"{self._seq + 1:012d}-{record.prediction_id}.json"
        try:
            write_durably(path, data)
        except OSError as exc:
            raise StoreUnavailable(f"store unavailable and cannot spool: {exc}") from exc
        self._seq += 1
        self._spooled[record.prediction_id] = path
        self._tell_depth(len(self._spooled))

    def replay(self) -> int:
        """Move spooled records to the store oldest first; stops at the first failure.

        Returns how many records left the spool; one whose key already exists counts too.
        """
        moved = 0
        with self._replay_lock:
            while True:
                with self._lock:
                    if not self._spooled:
                        break
                    prediction_id, path = next(iter(self._spooled.items()))
                try:
                    data = path.read_bytes()
                    record = FeedbackRecord.from_json(data)
                except FileNotFoundError:
                    # Another worker sharing this folder replayed it (it loaded the file
                    # at its start-up).
                    with self._lock:
                        self._spooled.pop(prediction_id, None)
                    continue
                except (OSError, ValueError) as exc:
                    # Unreadable: set it aside for a person rather than block the queue.
                    _report(self._on_error, "feedback", exc)
                    with contextlib.suppress(OSError):
                        path.rename(path.with_name(path.name + ".corrupt"))
                    with self._lock:
                        self._spooled.pop(prediction_id, None)
                    continue
                try:
                    # Keyed by the hour it reaches the store, which the loop reads next.
                    now = self._clock()
                    self._store_once(record, data, feedback_key(record, arrived=now), now)
                except FeedbackPending:
                    break  # the id's claim is young: the next replay decides it
                except StoreUnavailable as exc:
                    _report(self._on_error, "feedback", exc)
                    break
                with self._lock:
                    self._spooled.pop(prediction_id, None)
                # A crash before this unlink replays the record again: the marker makes
                # that harmless.
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
                moved += 1
        if moved:
            log.info("replayed %d spooled feedback records", moved)
            self._tell_depth(self.spool_depth)
        return moved

    def _tell_depth(self, depth: int) -> None:
        if self._on_depth is not None:
            self._on_depth(depth)

    def _replay_if_needed(self) -> None:
        if self.spool_depth:
            self.replay()

    def start(self) -> None:
        """Replay the spool every ``retry_interval_s`` in a daemon thread while it has records."""
        self._worker.start()

    def close(self) -> None:
        """Stop the thread after one last replay attempt; safe to call more than once."""
        self._worker.stop()
        self._replay_if_needed()
