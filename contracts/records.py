"""What the store holds: the records the service writes and the loop reads, and their keys.

Layout of the one bucket (S3 keys, or relative paths under the local backend's folder).
Every dataset is partitioned hive style by UTC date and hour, ``dt=YYYY-MM-DD/hour=HH``,
so a reader lists only the hours of its time range, and Spark, Trino, Athena or DuckDB
read the same folders as tables partitioned by ``dt`` and ``hour``:

- ``predictions/dt=.../hour=.../<pod>-<unix_ms>-<seq>.parquet``: batches of
  :class:`PredictionRecord` in :data:`PREDICTIONS_SCHEMA`, in the hour of their ``ts``
  (:func:`predictions_key`); compaction merges an hour into ``compacted-*.parquet``;
- ``feedback/dt=.../hour=.../<prediction_id>.json``: one :class:`FeedbackRecord`, in the
  hour it reached the store (:func:`feedback_key`), compacted like predictions into
  parquet in :data:`FEEDBACK_SCHEMA`;
- ``feedback-ids/<prediction_id>``: a marker per prediction id that took feedback, the
  one place that makes feedback idempotent per id across hours and days
  (:func:`feedback_marker_key`); nobody lists it;
- ``labelled/dt=.../hour=.../*.parquet``: the labelled dataset, predictions joined with
  their feedback (:data:`LABELLED_SCHEMA`), appended once by the loop's collect step in
  the hour of the feedback's ``ts``;
- ``loop-state/``, ``runs/<run_id>/``, ``reports/<run_id>/...``: what the pipeline writes.

Before this layout, predictions and feedback were under ``<prefix>/date=YYYY-MM-DD/``;
compaction moves such legacy objects into the hourly partitions (:func:`legacy_date`).

Records validate themselves when made, so a bad one fails the request that made it and
never a whole batch at flush time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa

from contracts.api import DIGITS, FEEDBACK_SOURCE_MAX, TRACKS

PREDICTIONS_PREFIX = "predictions/"
FEEDBACK_PREFIX = "feedback/"
FEEDBACK_IDS_PREFIX = "feedback-ids/"
LABELLED_PREFIX = "labelled/"
COMPACTED_PREFIX = "compacted-"  # file names compaction writes inside a partition
IMAGE_SIDE = 28
# Ids and pod names become path segments and S3 keys: keep them to characters that need no
# escaping anywhere, and out of the dot-files the local backend uses for its temp files.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("prediction_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("track", pa.string(), nullable=False),
        # "element" is Parquet's name for list items: the schema then survives a round trip.
        pa.field(
            "image",
            pa.list_(pa.field("element", pa.uint8(), nullable=False), IMAGE_SIDE * IMAGE_SIDE),
            nullable=False,
        ),
        pa.field(
            "probabilities",
            pa.list_(pa.field("element", pa.float32(), nullable=False), DIGITS),
            nullable=False,
        ),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("latency_ms", pa.float32(), nullable=False),
        # The answering version's novelty score (model.novelty); null for a version
        # registered without a scorer, and in files written before the column existed.
        pa.field("novelty", pa.float32(), nullable=True),
    ]
)
"""One row per prediction in every ``predictions/`` object."""

FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("prediction_id", pa.string(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)
"""One row per feedback record in compacted ``feedback/`` parquet (raw objects are JSON)."""

LABELLED_SCHEMA = pa.schema(
    [
        pa.field("prediction_id", pa.string(), nullable=False),
        pa.field("true_label", pa.int8(), nullable=False),
        pa.field("feedback_ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        *(f for f in PREDICTIONS_SCHEMA if f.name != "prediction_id"),
    ]
)
"""One row per labelled prediction in ``labelled/``: the feedback's fields (``label`` as
``true_label``, ``ts`` as ``feedback_ts``), then the prediction's."""


def check_name(value: str, what: str) -> None:
    """ValueError unless ``value`` is safe as one key segment (a prediction id, a pod name)."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def as_utc(ts: datetime, what: str) -> datetime:
    """``ts`` in UTC; ValueError for a naive datetime."""
    # Naive datetimes are refused rather than guessed: a wrong guess moves records to
    # another date partition, silently.
    if not isinstance(ts, datetime) or ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {ts!r}")
    return ts.astimezone(UTC)


def unix_ms(ts: datetime) -> int:
    """Whole milliseconds since the epoch of an aware ``ts`` (the parquet ``ts`` unit)."""
    return (as_utc(ts, "ts") - _EPOCH) // timedelta(milliseconds=1)


def _check_label(label: object) -> None:
    # The API's bounds (contracts.api), checked again for records made in-process and
    # read back from the store, which no request model has seen.
    digit = not isinstance(label, bool) and isinstance(label, int | np.integer)
    if not digit or not 0 <= label < DIGITS:
        raise ValueError(f"label must be an integer digit 0-{DIGITS - 1}, got {label!r}")


@dataclass(frozen=True)
class PredictionRecord:
    """One answered prediction, as the predictions log stores it."""

    prediction_id: str
    ts: datetime
    model_version: str
    track: str
    image: np.ndarray  # (28, 28) uint8, the preprocessed input
    probabilities: np.ndarray  # (DIGITS,) float32
    label: int
    latency_ms: float
    novelty: float | None = None  # the version's novelty score, None without a scorer

    def __post_init__(self) -> None:
        check_name(self.prediction_id, "prediction_id")
        as_utc(self.ts, "ts")
        if self.track not in TRACKS:
            raise ValueError(f"track must be one of {TRACKS}, got {self.track!r}")
        image = self.image
        if not isinstance(image, np.ndarray) or image.shape != (IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(
                f"image must be a ({IMAGE_SIDE}, {IMAGE_SIDE}) array, got {np.shape(image)}"
            )
        if image.dtype != np.uint8:
            raise ValueError(f"image must be uint8, got {image.dtype}")
        if (shape := np.shape(self.probabilities)) != (DIGITS,):
            raise ValueError(f"probabilities must have shape ({DIGITS},), got {shape}")
        _check_label(self.label)


@dataclass(frozen=True)
class FeedbackRecord:
    """The true digit a person gave for one prediction; stored as one JSON object."""

    prediction_id: str
    label: int
    ts: datetime
    source: str = "user"

    def __post_init__(self) -> None:
        check_name(self.prediction_id, "prediction_id")
        _check_label(self.label)
        as_utc(self.ts, "ts")
        if not isinstance(self.source, str) or not 0 < len(self.source) <= FEEDBACK_SOURCE_MAX:
            raise ValueError(
                f"source must be a string of 1-{FEEDBACK_SOURCE_MAX} characters, "
                f"got {self.source!r}"
            )

    def to_json(self) -> bytes:
        ts = as_utc(self.ts, "ts").isoformat().replace("+00:00", "Z")
        body = {
            "prediction_id": self.prediction_id,
            "label": int(self.label),
            "ts": ts,
            "source": self.source,
        }
        # One JSON line: pyarrow's JSON reader skips a last line without its newline.
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> FeedbackRecord:
        try:
            body = json.loads(data)
            return cls(
                prediction_id=body["prediction_id"],
                label=body["label"],
                ts=datetime.fromisoformat(body["ts"]),
                source=body.get("source", "user"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a feedback record: {exc}") from exc


@dataclass(frozen=True)
class FeedbackMarker:
    """What ``feedback-ids/<prediction_id>`` holds: the record, the key it is stored under,
    and when that key was claimed.

    Written *before* the record: a write that dies between the two leaves a marker whose key
    holds nothing, which a later attempt tells apart from a stored record (and, once the
    marker is no longer young, takes over). One JSON line: the record's fields plus ``key``
    and ``marked``, so a marker still reads as the id's first record. A marker without
    ``key`` was written by the older record-first writer, whose record came first.
    """

    record: FeedbackRecord
    key: str
    marked: datetime

    def to_json(self) -> bytes:
        body = json.loads(self.record.to_json())
        body["key"] = self.key
        body["marked"] = as_utc(self.marked, "marked").isoformat().replace("+00:00", "Z")
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> FeedbackMarker | None:
        """The marker; None for a legacy one (its record is stored).

        Raises:
            ValueError: not a marker.
        """
        record = FeedbackRecord.from_json(data)
        body = json.loads(data)
        if "key" not in body:
            return None
        try:
            return cls(record, str(body["key"]), datetime.fromisoformat(body["marked"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a feedback marker: {exc}") from exc


def partition(when: datetime) -> str:
    """``dt=YYYY-MM-DD/hour=HH``: the hive partition of the UTC hour holding ``when``."""
    when = as_utc(when, "when")
    return f"dt={when.date().isoformat()}/hour={when.hour:02d}"


def predictions_key(pod: str, when: datetime, seq: int) -> str:
    """``predictions/<partition of when>/<pod>-<unix ms of when>-<seq>.parquet``."""
    check_name(pod, "pod")
    return f"{PREDICTIONS_PREFIX}{partition(when)}/{pod}-{unix_ms(when)}-{seq}.parquet"


def feedback_key(record: FeedbackRecord, arrived: datetime | None = None) -> str:
    """``feedback/<partition of arrived>/<prediction_id>.json``; ``arrived`` defaults to the
    record's ``ts``. A record replayed from a spool arrives later than it was acknowledged:
    keyed by its arrival, it lands in an hour the loop has not processed yet."""
    when = record.ts if arrived is None else max(as_utc(arrived, "arrived"), record.ts)
    return f"{FEEDBACK_PREFIX}{partition(when)}/{record.prediction_id}.json"


def feedback_marker_key(prediction_id: str) -> str:
    """``feedback-ids/<prediction_id>``: a :class:`FeedbackMarker`, once feedback for the id
    was claimed."""
    check_name(prediction_id, "prediction_id")
    return f"{FEEDBACK_IDS_PREFIX}{prediction_id}"


def key_hour(key: str) -> datetime | None:
    """The start of the UTC hour of a ``<prefix>/dt=YYYY-MM-DD/hour=HH/...`` key, else None."""
    parts = key.split("/")
    if len(parts) < 4 or not parts[1].startswith("dt=") or not parts[2].startswith("hour="):
        return None
    try:
        day = date.fromisoformat(parts[1].removeprefix("dt="))
        hour = int(parts[2].removeprefix("hour="))
    except ValueError:
        return None
    if not 0 <= hour < 24:
        return None
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def key_date(key: str) -> date | None:
    """The UTC date of a key in the hourly layout or the legacy one (``date=YYYY-MM-DD``)."""
    hour = key_hour(key)
    return hour.date() if hour is not None else legacy_date(key)


def legacy_date(key: str) -> date | None:
    """The date of a key of the legacy layout ``<prefix>/date=YYYY-MM-DD/...``, else None."""
    parts = key.split("/")
    if len(parts) < 3 or not parts[1].startswith("date="):
        return None
    try:
        return date.fromisoformat(parts[1].removeprefix("date="))
    except ValueError:
        return None


def time_ordered_hex(when: datetime, random_bits: int) -> str:
    """32 hex digits laid out as a UUIDv7: 48 bits of unix ms, then version 7, then random.

    Prediction ids built on it carry their time, so the loop finds a prediction that
    feedback labels by reading one hour of the log (:func:`prediction_time`), not a week.
    """
    ms = unix_ms(when) & ((1 << 48) - 1)
    rand_a = (random_bits >> 62) & 0xFFF
    rand_b = random_bits & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return f"{value:032x}"


def prediction_time(prediction_id: str) -> datetime | None:
    """The time a :func:`time_ordered_hex` id was made, None for ids without one."""
    head = prediction_id.removeprefix("draft.")[:32]
    if len(head) != 32 or head[12] != "7" or head[16] not in "89ab":
        return None
    try:
        ms = int(head[:12], 16)
    except ValueError:
        return None
    return _EPOCH + timedelta(milliseconds=ms)
