"""What the store holds: the records the service writes and the loop reads, and their keys.

Layout of the one bucket (S3 keys, or relative paths under the local backend's folder;
dates are UTC):

- ``predictions/date=YYYY-MM-DD/<pod>-<unix_ms>-<seq>.parquet``: batches of
  :class:`PredictionRecord` in :data:`PREDICTIONS_SCHEMA`, keyed by :func:`predictions_key`;
- ``feedback/date=YYYY-MM-DD/<prediction_id>.json``: one :class:`FeedbackRecord` per
  prediction id, keyed by :func:`feedback_key`;
- ``reports/<run_id>/...``: whatever the pipeline writes.

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
    ]
)
"""One row per prediction in every ``predictions/`` object."""


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
        return json.dumps(body, separators=(",", ":")).encode()

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


def _date_dir(day: date) -> str:
    return f"date={day.isoformat()}"


def predictions_key(pod: str, when: datetime, seq: int) -> str:
    """``predictions/date=<UTC date of when>/<pod>-<unix ms of when>-<seq>.parquet``."""
    check_name(pod, "pod")
    when = as_utc(when, "when")
    return f"{PREDICTIONS_PREFIX}{_date_dir(when.date())}/{pod}-{unix_ms(when)}-{seq}.parquet"


def feedback_key(record: FeedbackRecord) -> str:
    """``feedback/date=<UTC date of the feedback>/<prediction_id>.json``."""
    day = as_utc(record.ts, "ts").date()
    return f"{FEEDBACK_PREFIX}{_date_dir(day)}/{record.prediction_id}.json"


def key_date(key: str) -> date | None:
    """The partition date of a ``<prefix>/date=YYYY-MM-DD/...`` key, None for other keys."""
    parts = key.split("/")
    if len(parts) < 3 or not parts[1].startswith("date="):
        return None
    try:
        return date.fromisoformat(parts[1].removeprefix("date="))
    except ValueError:
        return None
