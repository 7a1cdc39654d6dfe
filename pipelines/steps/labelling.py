"""The labelled dataset: feedback joined to its prediction once, as it arrives.

Each collect run processes only the feedback that reached the store since the last run's
watermark (:class:`LabellingState`, ``loop-state/labelling.json``), finds the predictions it
labels, and appends the joined rows to ``labelled/dt=.../hour=.../`` (the hour of the
feedback's ``ts``). Retrain, drift and the paired evaluation then read labels from there
without joining history again.

- Finding the prediction: an id made by the service carries its time
  (:func:`contracts.records.prediction_time`), so one or two hours of the log are read; an
  id without one (made before, or by a test) is looked for over ``LOOKBACK``.
- Feedback whose prediction is not logged yet stays in the state and is tried again by
  the next runs, for ``RETRY_FOR``; the window counts it pending, then orphaned.
- Crash-safe: the state is written last. A run that dies before it leaves the watermark
  where it was; the next run reads the same feedback again and skips ids the labelled
  dataset already holds, so nothing is lost and nothing is appended twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.records import (
    LABELLED_PREFIX,
    LABELLED_SCHEMA,
    as_utc,
    partition,
    prediction_time,
    unix_ms,
)
from services.store.backends import ObjectNotFound, ObjectStore
from services.store.readers import (
    HOUR,
    read_feedback_arrived,
    read_labelled,
    read_predictions,
)
from services.store.writers import PARQUET

log = logging.getLogger(__name__)

STATE_KEY = "loop-state/labelling.json"
# How far back feedback may point: a prediction older than this is not looked for.
LOOKBACK = timedelta(days=7)
# Feedback written while the previous run listed its hour: read that stretch again.
OVERLAP = timedelta(minutes=5)
RETRY_FOR = timedelta(days=1)
# An id's time and the prediction's ts differ by the time to answer; near an hour's
# boundary they may fall in two hours.
_ID_SLACK = timedelta(minutes=1)
_FEEDBACK_COLUMNS = ["prediction_id", "label", "ts", "source"]


@dataclass(frozen=True)
class LabellingState:
    """Where the last run stopped, and the feedback it could not join yet."""

    watermark: datetime | None = None
    unjoined: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_FEEDBACK_COLUMNS))

    def to_json(self) -> bytes:
        rows = [
            {
                "prediction_id": r.prediction_id,
                "label": int(r.label),
                "ts": pd.Timestamp(r.ts).isoformat(),
                "source": r.source,
            }
            for r in self.unjoined.itertuples()
        ]
        body = {"watermark": self.watermark.isoformat() if self.watermark else None,
                "unjoined": rows}  # fmt: skip
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LabellingState:
        body = json.loads(data)
        unjoined = pd.DataFrame(body.get("unjoined") or [], columns=_FEEDBACK_COLUMNS)
        unjoined["ts"] = pd.to_datetime(unjoined["ts"], utc=True)
        watermark = body.get("watermark")
        return cls(datetime.fromisoformat(watermark) if watermark else None, unjoined)


@dataclass(frozen=True)
class LabellingResult:
    """What one run appended to the labelled dataset."""

    arrived: int  # feedback records read since the watermark (and retried ones)
    appended: int  # joined rows written
    unjoined: int  # kept for the next runs
    keys: tuple[str, ...]


def load_state(store: ObjectStore) -> LabellingState:
    try:
        return LabellingState.from_json(store.get(STATE_KEY))
    except ObjectNotFound:
        return LabellingState()


def new_feedback(
    arrived: pd.DataFrame, state: LabellingState, labelled_ids: set[str], now: datetime
) -> pd.DataFrame:
    """Feedback to join: arrived with ``ts < now`` or kept from before, not yet labelled,
    once per prediction id (the first)."""
    arrived = arrived[arrived["ts"] < pd.Timestamp(now)][_FEEDBACK_COLUMNS]
    frames = [f for f in (state.unjoined, arrived) if len(f)]
    if not frames:
        return pd.DataFrame(columns=_FEEDBACK_COLUMNS)
    both = pd.concat(frames, ignore_index=True)
    both["ts"] = pd.to_datetime(both["ts"], utc=True)
    both = both.sort_values("ts", kind="stable").drop_duplicates("prediction_id")
    return both[~both["prediction_id"].isin(labelled_ids)].reset_index(drop=True)


def hour_ranges(times: list[datetime]) -> list[tuple[datetime, datetime]]:
    """The hours around each time (within ``_ID_SLACK``), merged into ``[since, until)``
    ranges."""
    hours = sorted(
        {
            (t + d).replace(minute=0, second=0, microsecond=0)
            for t in times
            for d in (-_ID_SLACK, _ID_SLACK)
        }
    )
    ranges: list[tuple[datetime, datetime]] = []
    for hour in hours:
        if ranges and ranges[-1][1] == hour:
            ranges[-1] = (ranges[-1][0], hour + HOUR)
        else:
            ranges.append((hour, hour + HOUR))
    return ranges


def find_predictions(store: ObjectStore, feedback: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """The logged predictions ``feedback`` labels: by the time in their id, else by a scan
    of ``LOOKBACK`` before the oldest feedback."""
    if feedback.empty:
        return read_predictions(store, now, now)
    hinted = {pid: prediction_time(pid) for pid in feedback["prediction_id"]}
    timed = [t for t in hinted.values() if t is not None]
    frames = [
        read_predictions(store, since, until, ids=[p for p, t in hinted.items() if t])
        for since, until in hour_ranges(timed)
    ]
    untimed = feedback[[hinted[p] is None for p in feedback["prediction_id"]]]
    if len(untimed):
        oldest = untimed["ts"].min().to_pydatetime()
        frames.append(read_predictions(store, oldest - LOOKBACK, now, ids=untimed["prediction_id"]))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else read_predictions(store, now, now)


def join(feedback: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Feedback joined to its prediction (made at most ``LOOKBACK`` before it), in
    :data:`LABELLED_SCHEMA`'s columns."""
    if feedback.empty or predictions.empty:
        return LABELLED_SCHEMA.empty_table().to_pandas()
    renamed = feedback.rename(columns={"label": "true_label", "ts": "feedback_ts"})
    joined = renamed.merge(predictions, on="prediction_id", how="inner")
    joined = joined[joined["ts"] >= joined["feedback_ts"] - LOOKBACK]
    return joined[LABELLED_SCHEMA.names].reset_index(drop=True)


def labelled_objects(joined: pd.DataFrame, now: datetime) -> dict[str, bytes]:
    """One parquet object per hour of ``feedback_ts``; the name is the rows' own hash, so a
    repeated write of the same rows is the same object."""
    objects = {}
    hours = joined["feedback_ts"].dt.floor("h")
    for hour, rows in joined.groupby(hours, sort=True):
        table = pa.Table.from_pandas(rows, schema=LABELLED_SCHEMA, preserve_index=False)
        digest = hashlib.sha256("\n".join(sorted(rows["prediction_id"])).encode()).hexdigest()
        key = (
            f"{LABELLED_PREFIX}{partition(hour.to_pydatetime())}/"
            f"joined-{unix_ms(now)}-{digest[:12]}.parquet"
        )
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        objects[key] = sink.getvalue()
    return objects


def advance(store: ObjectStore, now: datetime) -> LabellingResult:
    """Append the feedback that arrived since the watermark, joined, to the labelled dataset.

    The order is what makes a crash harmless: labelled rows first, the state last.
    """
    now = as_utc(now, "now")
    state = load_state(store)
    start = (state.watermark or datetime(1970, 1, 1, tzinfo=UTC)) - OVERLAP
    arrived = read_feedback_arrived(store, start, now)
    pool = pd.concat([f for f in (state.unjoined, arrived) if len(f)] or [arrived])
    pool_ts = pd.to_datetime(pool["ts"], utc=True)
    labelled_ids: set[str] = set()
    if len(pool):
        seen = read_labelled(
            store, pool_ts.min().to_pydatetime(), now + HOUR, columns=["prediction_id"]
        )
        labelled_ids = set(seen["prediction_id"])
    todo = new_feedback(arrived, state, labelled_ids, now)
    joined = join(todo, find_predictions(store, todo, now))
    objects = labelled_objects(joined, now) if len(joined) else {}
    for key, data in objects.items():
        store.put(key, data, PARQUET)
    unjoined = todo[~todo["prediction_id"].isin(joined["prediction_id"])]
    unjoined = unjoined[unjoined["ts"] >= pd.Timestamp(now - RETRY_FOR)]
    store.put(
        STATE_KEY,
        LabellingState(max(now, state.watermark or now), unjoined).to_json(),
        "application/json",
    )
    log.info("labelled: %d arrived, %d appended, %d unjoined", len(arrived), len(joined),
             len(unjoined))  # fmt: skip
    return LabellingResult(len(arrived), len(joined), len(unjoined), tuple(objects))
